"""Stand-ins for pynetdicom modules the engine has no counterpart for (see tests/compat/shim.py).

This folder is the shim ``pynetdicom`` package's ``__path__``: ``import pynetdicom.X`` finds
``X.py`` here when ``engine`` has no public module for it. Nothing here is pynetdicom code.
"""
