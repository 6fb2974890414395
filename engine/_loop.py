"""A private event loop on a background thread, for the blocking (pynetdicom-style) API.

Theory of operation: the engine is asyncio all the way down. Scripts ported from
pynetdicom call blocking methods (``ae.associate(...)``, ``assoc.send_c_store(ds)``);
each :class:`~engine.ae.ApplicationEntity` lazily starts one loop thread and submits
coroutines to it with ``run_coroutine_threadsafe``. That thread is the only one: every
association of the AE, requestor or acceptor, runs on that one loop. The hot paths
(storage workers, the load generator) use :mod:`engine.aio` directly and never touch
this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine

from .aio import new_event_loop

__all__ = ["LoopThread"]


class LoopThread:
    """One event loop running forever on a daemon thread."""

    def __init__(self, name: str = "scpfleet-loop") -> None:
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for its result from this thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "a blocking engine call was made from inside an event handler; "
                "use the engine.aio coroutines there"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Any, *args: Any) -> None:
        """Schedule ``fn(*args)`` on the loop (fire and forget)."""
        self.loop.call_soon_threadsafe(fn, *args)

    @property
    def is_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()
