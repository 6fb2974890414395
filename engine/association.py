"""The blocking association handle returned by ``ApplicationEntity.associate``.

Theory of operation: :class:`Association` wraps an :class:`engine.aio.Association` that
lives on the AE's loop thread and turns each coroutine method into a blocking call, so
scripts written for pynetdicom run unchanged::

    assoc = ae.associate("127.0.0.1", 11112)
    if assoc.is_established:
        status = assoc.send_c_store(ds)
        assoc.release()

Attribute reads (``is_established``, ``accepted_contexts``...) go straight to the async
object; they are plain values written only on the loop thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from . import aio
from .dul import DULServiceProvider

if TYPE_CHECKING:  # pragma: no cover
    from ._loop import LoopThread

__all__ = ["Association"]


class Association:
    """A blocking view of one association (pynetdicom's ``Association`` API)."""

    def __init__(self, inner: aio.Association, runner: "LoopThread", ae: Any = None) -> None:
        self._inner = inner
        self._runner = runner
        self.ae = ae
        self.dul = DULServiceProvider(assoc=inner, runner=runner)

    # -- state --------------------------------------------------------------------------

    @property
    def is_established(self) -> bool:
        return self._inner.is_established

    @property
    def is_rejected(self) -> bool:
        return self._inner.is_rejected

    @property
    def is_aborted(self) -> bool:
        return self._inner.is_aborted

    @property
    def is_released(self) -> bool:
        return self._inner.is_released

    @property
    def is_acceptor(self) -> bool:
        return not self._inner.is_requestor

    @property
    def is_requestor(self) -> bool:
        return self._inner.is_requestor

    @property
    def accepted_contexts(self) -> list:
        return list(self._inner.accepted_contexts)

    @property
    def rejected_contexts(self) -> list:
        return list(self._inner.rejected_contexts)

    @property
    def requestor(self) -> aio.ServiceUserInfo:
        return self._inner.requestor

    @property
    def acceptor(self) -> aio.ServiceUserInfo:
        return self._inner.acceptor

    @property
    def acse_timeout(self) -> float | None:
        return self._inner.acse_timeout

    @property
    def dimse_timeout(self) -> float | None:
        return self._inner.dimse_timeout

    @property
    def network_timeout(self) -> float | None:
        return self._inner.network_timeout

    @property
    def connection_timeout(self) -> float | None:
        return self._inner.connection_timeout

    def _set_timeout(self, name: str, value: float | int | None) -> None:
        """Apply a changed AE timeout (``acse_timeout``...) to this live association."""
        inner = self._inner
        setattr(inner, name, value)
        if name == "connection_timeout":
            return  # the connection is made already
        conn = inner.conn
        if name == "acse_timeout":
            conn.machine.artim_timeout = value
        elif name == "dimse_timeout":
            conn.dimse_timeout = value
        else:
            conn.network_timeout = value
        if not self._runner.loop.is_closed():
            self._runner.call(inner.link.arm_timer)

    def is_alive(self) -> bool:
        """Whether the transport connection is still open."""
        return not self._inner.closed.done()

    # -- services -----------------------------------------------------------------------

    def send_c_echo(self, msg_id: int = 1) -> Dataset:
        """Send a C-ECHO request; return the status Dataset (empty if none came)."""
        return self._runner.run(self._inner.send_c_echo(msg_id))

    def send_c_store(
        self,
        dataset: Dataset | str | os.PathLike,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: bytes | str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        """Send a C-STORE of a Dataset or of a Part 10 file (streamed, not decoded)."""
        return self._runner.run(
            self._inner.send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        )

    def release(self) -> None:
        """Release the association and wait for the connection to close."""
        if not self._inner.is_established:
            return  # nothing to release (and the AE's loop may be gone after shutdown)
        self._runner.run(self._inner.release())

    def abort(self) -> None:
        """Abort the association at once."""
        if not self.is_alive():
            return  # already over (and the AE's loop may be gone after shutdown)
        self._runner.run(_call(self._inner.abort))

    def __repr__(self) -> str:
        return repr(self._inner)


async def _call(fn: Any) -> Any:
    return fn()
