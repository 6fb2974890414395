"""Coverage-guided fuzz harnesses (atheris) and the hand-built wire bytes they share with
tests/hardening. The harnesses are scripts (``python tests/fuzz/fuzz_pdu.py
-atheris_runs=N``), never collected by pytest."""
