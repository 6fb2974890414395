"""The import shim that runs pynetdicom's own tests against ``engine`` (a pytest plugin).

Theory of operation: loaded with ``-p tests.compat.shim`` in the subprocess pytest run of
:mod:`tests.compat.runner`, before any test module is imported. It puts a ``pynetdicom``
package into ``sys.modules`` whose names are the ``engine`` package's, plus the few
constants pynetdicom exports under its own names, and aliases each public pynetdicom
module to the engine module that plays its part (``pynetdicom.ae`` is ``engine.ae``,
``pynetdicom.events`` is ``engine.evt`` ...). Modules the engine has no counterpart
for resolve to the stand-ins in ``tests/compat/_pnd/`` (the shim package's
``__path__``); anything else fails to import, as it would for a ported script.

For a 2.0+ release the shim also does what a user porting from it would: its ``AE``
defaults to pynetdicom 2.0+'s four transfer syntaxes (``default_transfer_syntaxes =
DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED``), and so do its ``build_context`` and
``DEFAULT_TRANSFER_SYNTAXES``; the engine's own default stays the reference's three.

One thing keeps a failing test from stalling the run: pynetdicom's raw-socket test peer
(``tests/parrot.py``) serves each connection in a ``socketserver`` thread that waits
for the test's next step; a test that fails halfway leaves it waiting, and closing the
server would join it for ever. Here those threads are daemons that closing does not
join (``ThreadingMixIn.daemon_threads``/``block_on_close``): the test fails, the run
goes on.

Two things are about the test files' age, not the engine: pydicom 3 removed
``pydicom.read_file`` (the 1.x tests call it; it is bound to ``dcmread``), and pytest 8
stopped calling nose-style ``setup``/``teardown`` methods (an autouse fixture calls
them). When the runner started pytest in a private network namespace
(``SCPFLEET_COMPAT_NETNS=1``), its loopback interface is brought up here, so the tests'
fixed port 11112 is theirs alone.
"""

from __future__ import annotations

import fcntl
import os
import socket
import socketserver
import struct
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import engine
from engine import _config, presentation, sop_class

_STANDINS = Path(__file__).with_name("_pnd")

#: pynetdicom module -> the engine module that plays its part.
_MODULES = {
    "ae": "engine.ae",
    "association": "engine.association",
    "dul": "engine.dul",
    "events": "engine.evt",
    "evt": "engine.evt",
    "presentation": "engine.presentation",
    "sop_class": "engine.sop_class",
    "status": "engine.status",
}


def _bring_up_loopback() -> None:
    """Set IFF_UP on ``lo`` in this (fresh) network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


def _release_major() -> int:
    version = os.environ.get("SCPFLEET_COMPAT_VERSION", "1")
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 1


#: pynetdicom 2.0+'s defaults; absent from an engine older than the option (the runner
#: can measure a past commit), whose AE then keeps its three.
_FOUR = getattr(sop_class, "DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED", None)


class AE(engine.AE):
    """``pynetdicom.AE`` of a 2.0+ release: four default transfer syntaxes."""

    def __init__(self, ae_title: bytes | str = b"PYNETDICOM") -> None:
        super().__init__(ae_title)
        self.default_transfer_syntaxes = _FOUR


def _build_context_four(abstract_syntax: object, transfer_syntax: object = None) -> object:
    if transfer_syntax is None:
        transfer_syntax = _FOUR
    return presentation.build_context(abstract_syntax, transfer_syntax)  # type: ignore[arg-type]


def install() -> None:
    """Put the ``pynetdicom`` alias package and its submodules into ``sys.modules``."""
    import importlib

    package = types.ModuleType("pynetdicom", "engine, seen through pynetdicom's names")
    for name in dir(engine):
        if not name.startswith("__"):
            setattr(package, name, getattr(engine, name))
    package.__path__ = [str(_STANDINS)]  # type: ignore[attr-defined]
    package.__version__ = os.environ.get("SCPFLEET_COMPAT_VERSION", "")  # type: ignore[attr-defined]
    package.DEFAULT_TRANSFER_SYNTAXES = list(sop_class.DEFAULT_TRANSFER_SYNTAXES)  # type: ignore[attr-defined]
    package.PYNETDICOM_IMPLEMENTATION_UID = _config.IMPLEMENTATION_CLASS_UID  # type: ignore[attr-defined]
    package.PYNETDICOM_IMPLEMENTATION_VERSION = _config.IMPLEMENTATION_VERSION_NAME  # type: ignore[attr-defined]
    sys.modules["pynetdicom"] = package
    for name, target in _MODULES.items():
        module = importlib.import_module(target)
        sys.modules[f"pynetdicom.{name}"] = module
        setattr(package, name, module)
    if _release_major() >= 2 and _FOUR is not None:
        four_defaults = list(_FOUR)
        package.AE = package.ApplicationEntity = AE  # type: ignore[attr-defined]
        package.build_context = _build_context_four  # type: ignore[attr-defined]
        package.DEFAULT_TRANSFER_SYNTAXES = four_defaults  # type: ignore[attr-defined]
        # pynetdicom.presentation: engine.presentation with that build_context.
        four = types.ModuleType("pynetdicom.presentation")
        four.__getattr__ = lambda name: getattr(presentation, name)  # type: ignore[method-assign]
        four.build_context = _build_context_four  # type: ignore[attr-defined]
        four.DEFAULT_TRANSFER_SYNTAXES = four_defaults  # type: ignore[attr-defined]
        sys.modules["pynetdicom.presentation"] = four
        package.presentation = four  # type: ignore[attr-defined]
    socketserver.ThreadingMixIn.daemon_threads = True
    socketserver.ThreadingMixIn.block_on_close = False
    if not hasattr(pydicom, "read_file"):
        pydicom.read_file = pydicom.dcmread  # type: ignore[attr-defined]


if os.environ.get("SCPFLEET_COMPAT_NETNS") == "1":
    _bring_up_loopback()
install()


@pytest.fixture(autouse=True)
def _nose_style_setup(request: pytest.FixtureRequest) -> Iterator[None]:
    """Call a test class's ``setup``/``teardown`` methods as pytest < 8 did."""
    instance = request.instance
    cls = type(instance)
    if instance is not None and "setup_method" not in vars(cls) and callable(
        getattr(instance, "setup", None)
    ):
        instance.setup()
    yield
    if instance is not None and "teardown_method" not in vars(cls) and callable(
        getattr(instance, "teardown", None)
    ):
        instance.teardown()
