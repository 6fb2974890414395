"""The test data sets: the generator lives in bench/corpus.py, which the benchmarks share.

Theory of operation: bench never imports tests, so the one generator of every data set
the tests and benchmarks send is :mod:`bench.corpus`; this module only re-exports it
under the name the tests have always imported. It defines nothing of its own.
"""

from bench.corpus import *  # noqa: F403 -- a re-export, see the module doc
from bench.corpus import __all__  # noqa: F401
