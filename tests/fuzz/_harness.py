"""What every atheris harness shares: the import path, the seed corpus, libFuzzer setup.

Theory of operation: a harness is run as a script (``python tests/fuzz/fuzz_pdu.py
-atheris_runs=N [libFuzzer flags] [corpus dirs]``), so it puts the repository root on
``sys.path`` itself, imports the engine and storage under atheris' coverage
instrumentation, and, unless a corpus directory is given, starts libFuzzer on a fresh
temporary corpus holding the harness' seeds (tests/fuzz/seeds.py), removed at exit.
Crashes are written where libFuzzer is told (``-artifact_prefix=DIR/``), else to the
current directory.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import atheris  # noqa: E402  (needs the path above only for what follows)

# Coverage is collected where the peer's bytes go, not in pydicom or numpy.
with atheris.instrument_imports(include=["engine", "storage"]):
    import engine  # noqa: F401
    import engine._acse  # noqa: F401
    import engine._connection  # noqa: F401
    import engine._dimse  # noqa: F401
    import engine._fsm  # noqa: F401
    import engine._pdu  # noqa: F401
    import engine.presentation  # noqa: F401
    import storage  # noqa: F401
    import storage._meta  # noqa: F401


def run(test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    """Start libFuzzer on ``test_one_input``; seed a temporary corpus unless given one."""
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="scpfleet-fuzz-"))
        atexit.register(shutil.rmtree, corpus, ignore_errors=True)
        for i, seed in enumerate(seeds):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
        argv.append(str(corpus))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
