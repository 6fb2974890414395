"""An asyncio transport in memory, for benchmarks that feed an association bytes
without a socket: it counts what the association writes, never pauses, and can wake a
waiter at the next write (a response).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["MemoryTransport"]


class MemoryTransport(asyncio.Transport):
    """Counts the bytes (:attr:`written`) and the writes (:attr:`writes`: one per PDU
    batch the association sends, e.g. one per response); :attr:`waiter`, when set, is
    resolved by the next write."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes = 0
        self.closing = False
        self.waiter: asyncio.Future[None] | None = None

    def writelines(self, data: Any) -> None:
        for buffer in data:
            self.written += len(buffer)
        self.writes += 1
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: Any) -> None:
        self.writelines((data,))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 11112)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return 0
