"""``pynetdicom.transport`` for the compatibility run.

pynetdicom's test helper (``tests/parrot.py``, a raw-socket peer that replays PDU bytes)
subclasses ``transport.AssociationServer`` only to inherit ``socketserver.TCPServer``;
it calls ``TCPServer.__init__`` itself. These stand-ins give it that base. The engine's
own server is :class:`engine.AssociationServer`; a test that uses pynetdicom's
``AssociationServer``/``RequestHandler`` internals fails, as the expectation list says.
"""

import socketserver

__all__ = ["AssociationServer", "RequestHandler"]


class AssociationServer(socketserver.TCPServer):
    """A plain TCPServer (the parrot's base class)."""


class RequestHandler(socketserver.BaseRequestHandler):
    """A plain request handler (pynetdicom's is an internal)."""
