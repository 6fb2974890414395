"""Run one pynetdicom release's ``test_ae.py`` and ``test_dul.py`` against ``engine``.

Theory of operation: :func:`fetch_tests` gets the release's sdist with
``pip download --no-deps --no-binary :all: pynetdicom==X`` into a gitignored cache
(``.cache/compat/`` at the repository root), and copies its ``pynetdicom/tests`` folder
out as a package named ``pnd_tests`` (so that nothing named ``pynetdicom`` is on the
path but the shim). :func:`run_suite` runs pytest on the two files in a subprocess with
the import shim (:mod:`tests.compat.shim`), in a private network namespace when the
machine allows one (the tests listen on the fixed port 11112), and reads the outcome of
every test from a JUnit XML report. :func:`compare` sets the outcomes against the
committed expectation list (``expected/pynetdicom-X.txt``: the tests expected to fail,
one per line, each with its reason). No pynetdicom code is committed or imported by the
engine: it is downloaded when the tests run and runs only in that subprocess.

As a program (``python -m tests.compat.runner 3.0.4``) it prints the pass count and
the differences from the expectation list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "compat"
EXPECTED = Path(__file__).with_name("expected")
#: The files of pynetdicom's suite this run covers (the AE and the DUL APIs).
TEST_FILES = ("test_ae.py", "test_dul.py")
#: A hung test must not stall the run: pynetdicom's own tests finish in seconds each.
PER_TEST_TIMEOUT_S = 60
#: The whole subprocess run, far above its normal few minutes.
RUN_TIMEOUT_S = 1800
#: Download bound: one sdist of about a megabyte.
DOWNLOAD_TIMEOUT_S = 300


@dataclass
class SuiteResult:
    version: str
    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed/failed/skipped
    details: dict[str, str] = field(default_factory=dict)  # test id -> first failure line
    output: str = ""

    @property
    def passed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o == "passed")

    @property
    def total(self) -> int:
        return len(self.outcomes)


def fetch_tests(version: str) -> Path:
    """The folder holding the ``pnd_tests`` package of pynetdicom ``version``."""
    root = CACHE / f"pynetdicom-{version}"
    package = root / "pnd_tests"
    if (package / "test_ae.py").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"pynetdicom-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", f"pynetdicom=={version}", "-d", str(CACHE)],
            check=True, timeout=DOWNLOAD_TIMEOUT_S,
        )
    prefix = f"pynetdicom-{version}/pynetdicom/tests/"
    staging = root.with_suffix(".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not (member.isfile() or member.isdir()):
                continue
            relative = member.name[len(prefix):]
            if not relative or ".." in Path(relative).parts:
                continue
            target = staging / "pnd_tests" / relative
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            target.write_bytes(source.read())
    (staging / "pytest.ini").write_text("[pytest]\n")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def _private_network() -> list[str]:
    """A command prefix that runs in a new network namespace, or [] when not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return []
    probe = subprocess.run([unshare, "--net", "true"], capture_output=True)
    return [unshare, "--net"] if probe.returncode == 0 else []


def run_suite(version: str, engine_root: Path = REPO) -> SuiteResult:
    """Run the release's test files against the engine; every test's outcome.

    ``engine_root`` is the folder holding the ``engine`` package to test (another
    checkout, to measure a past commit).
    """
    root = fetch_tests(version)
    report = root / "report.xml"
    report.unlink(missing_ok=True)
    prefix = _private_network()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(engine_root), str(REPO), str(root)])
    env["SCPFLEET_COMPAT_VERSION"] = version
    env["SCPFLEET_COMPAT_NETNS"] = "1" if prefix else "0"
    env.pop("PYTEST_ADDOPTS", None)
    command = [
        *prefix, sys.executable, "-m", "pytest", "-p", "tests.compat.shim",
        "-p", "no:cacheprovider", "-c", str(root / "pytest.ini"), "--rootdir", str(root),
        "-q", f"--timeout={PER_TEST_TIMEOUT_S}", f"--junitxml={report}",
        *(f"pnd_tests/{name}" for name in TEST_FILES),
    ]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    result = SuiteResult(version, output=done.stdout + done.stderr)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}):\n"
                           f"{result.output[-4000:]}")
    for case in ET.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        parts = classname.split(".")
        if len(parts) >= 2 and parts[0] == "pnd_tests":
            test_id = "::".join([parts[1] + ".py", *parts[2:], name])
        else:  # a module that failed to import
            test_id = f"{classname}.{name}" if classname else name
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = (child.get("message") or child.text or "").strip()
                result.details.setdefault(test_id, message.splitlines()[0] if message else "")
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        result.outcomes[test_id] = outcome
    return result


def load_expected(version: str) -> dict[str, str]:
    """Test id -> reason, for the tests of ``version`` expected to fail."""
    path = EXPECTED / f"pynetdicom-{version}.txt"
    expected: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition(" # ")
        expected[test_id.strip()] = reason.strip()
    return expected


def compare(result: SuiteResult, expected: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """(unexpected failures, expected failures that now pass, listed ids not run)."""
    failing = {t for t, o in result.outcomes.items() if o == "failed"}
    unexpected = sorted(failing - set(expected))
    now_pass = sorted(t for t in expected if result.outcomes.get(t) == "passed")
    missing = sorted(t for t in expected if t not in result.outcomes)
    return unexpected, now_pass, missing


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", default=["1.4.1", "3.0.4"])
    parser.add_argument("--engine-root", type=Path, default=REPO,
                        help="folder holding the engine package to test (default: this one)")
    args = parser.parse_args(argv)
    status = 0
    for version in args.versions:
        result = run_suite(version, args.engine_root.resolve())
        skipped = sum(1 for o in result.outcomes.values() if o == "skipped")
        print(f"pynetdicom {version}: {result.passed} of {result.total} passed"
              + (f", {skipped} skipped" if skipped else ""))
        expected = load_expected(version) if (EXPECTED / f"pynetdicom-{version}.txt").exists() else {}
        unexpected, now_pass, missing = compare(result, expected)
        for test_id in unexpected:
            print(f"  FAILS (not expected): {test_id}: {result.details.get(test_id, '')}")
        for test_id in now_pass:
            print(f"  PASSES (listed as expected to fail): {test_id}")
        for test_id in missing:
            print(f"  NOT RUN (listed): {test_id}")
        status |= bool(unexpected or now_pass or missing)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
