"""DIMSE messages, public: command fields, message structs and their codec.

The service layer above the engine builds and reads DIMSE messages through this module
(the implementation is :mod:`engine._dimse`, whose docstring explains it).
"""

from ._dimse import *  # noqa: F403 - the public names are _dimse's __all__
from ._dimse import __all__  # noqa: F401
