"""What the C-FIND, C-GET and C-MOVE providers share: the operation that gathers an
Identifier, and reading a catalog cursor off the event loop.

Theory of operation: a Q/R request's Identifier is a few hundred bytes; an
:class:`IdentifierOperation` collects its fragments (refusing past
:data:`~.query_model.MAX_IDENTIFIER`), then hands the whole of it to the provider's
coroutine, whose answer is the final response. It never holds reading: while it runs,
the peer's C-CANCEL-RQ (and, for C-GET, the C-STORE-RSPs of its sub-operations) must
still be read.

:class:`Rows` reads a :class:`storage.QueryCursor` a page at a time in an executor
thread, so a query over millions of rows never blocks the loop the node's associations
share; it closes the cursor when done, after any page still being read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from engine import status
from storage import QueryCursor

from .query_model import MAX_IDENTIFIER

__all__ = ["IdentifierOperation", "Rows", "log"]

log = logging.getLogger("scpfleet.services")


class IdentifierOperation:
    """Gathers a request's Identifier, then answers with ``run(identifier)``."""

    __slots__ = ("run", "parts", "size", "aborted")
    holds_reading = False

    def __init__(self, run: Callable[[bytes], Awaitable[Any]]) -> None:
        self.run = run
        self.parts: list[bytes] = []
        self.size = 0
        self.aborted = False

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if self.size <= MAX_IDENTIFIER:
            self.parts.append(bytes(data))

    def finish(self) -> Any:
        if self.size > MAX_IDENTIFIER:
            self.parts = []
            return (status.REFUSED_OUT_OF_RESOURCES,
                    f"identifier of {self.size} bytes is over {MAX_IDENTIFIER >> 20} MiB")
        return self.run(b"".join(self.parts))

    def abort(self) -> None:
        self.aborted = True
        self.parts = []


class Rows:
    """The rows of ``cursor``, ``page`` at a time, each page read in ``executor``."""

    def __init__(self, cursor: QueryCursor, page: int,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self.cursor = cursor
        self.page = page
        self.executor = executor
        self._reading: asyncio.Future[Any] | None = None

    async def pages(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page, until the end. Raises :class:`storage.CatalogError`."""
        loop = asyncio.get_running_loop()
        while True:
            self._reading = loop.run_in_executor(self.executor, self.cursor.fetch, self.page)
            # Shielded: a cancelled caller must not mark the page done while a thread
            # still reads it (close() waits for it).
            rows = await asyncio.shield(self._reading)
            self._reading = None
            if not rows:
                return
            yield rows

    def close(self) -> None:
        """Close the cursor now, or once the page being read is in."""
        reading = self._reading
        if reading is not None and not reading.done():
            reading.add_done_callback(lambda _: self.cursor.close())
        else:
            self.cursor.close()
