"""pynetdicom's own ``test_ae.py`` and ``test_dul.py``, run against ``engine``.

Theory of operation: :mod:`tests.compat.runner` downloads the release's sdist (cached in
the gitignored ``.cache/compat/``), runs the two files in a pytest subprocess through
the import shim (:mod:`tests.compat.shim`) and reports every test's outcome. Each test
here runs one release and compares with its committed expectation list
(``expected/pynetdicom-X.txt``): a failure not on the list is an engine bug, and a
listed test that now passes must come off the list, so that it stays honest. The
releases are the one the reference documentation describes (1.4.1) and the current one.
"""

from __future__ import annotations

import pytest

from tests.compat import runner

#: Release -> how many tests its two files hold (a collection problem shows as a change).
RELEASES = {"1.4.1": 92, "3.0.4": 112}


@pytest.mark.slow
@pytest.mark.interop
@pytest.mark.timeout(runner.RUN_TIMEOUT_S + runner.DOWNLOAD_TIMEOUT_S)
@pytest.mark.parametrize("version", sorted(RELEASES))
def test_pynetdicom_suite_matches_expectations(version: str) -> None:
    result = runner.run_suite(version)
    expected = runner.load_expected(version)
    unexpected, now_pass, missing = runner.compare(result, expected)
    report = "\n".join(
        [f"pynetdicom {version}: {result.passed} of {result.total} passed"]
        + [f"fails, not expected: {t}: {result.details.get(t, '')}" for t in unexpected]
        + [f"passes, remove it from expected/pynetdicom-{version}.txt: {t}" for t in now_pass]
        + [f"listed but not run: {t}" for t in missing]
    )
    assert result.total == RELEASES[version], report + "\n" + result.output[-3000:]
    assert not unexpected and not now_pass and not missing, report
    assert result.passed == result.total - len(expected), report
