"""--allow-address: peers outside the listed networks never reach DICOM.

Theory of operation: two real nodes on 127.0.0.1, one allowing 127.0.0.0/8 and one
allowing only a documentation network (192.0.2.0/24, never routed). A C-ECHO from
loopback succeeds on the first; on the second the connection is closed before any PDU
is read, so the association request gets no answer at all.
"""

from __future__ import annotations

import asyncio

from engine import aio
from engine.presentation import build_context
from engine.sop_class import VerificationSOPClass
from tests.workers.nodes import HOST


async def _echo(port: int) -> aio.Association:
    config = aio.RequestorConfig(
        calling_ae_title=b"ALLOWTEST".ljust(16),
        called_ae_title=b"SCPFLEET".ljust(16),
        contexts=[build_context(VerificationSOPClass)],
        acse_timeout=10,
        dimse_timeout=10,
        network_timeout=10,
    )
    assoc = await aio.associate(HOST, port, config)
    if assoc.is_established:
        status = await assoc.send_c_echo()
        assert status.Status == 0x0000
        await assoc.release()
    return assoc


def test_allowed_network_is_served_and_others_are_closed(node_factory, tmp_path):
    allowed = node_factory("--workers", "1", "--allow-address", "127.0.0.0/8",
                           storage=tmp_path / "allowed")
    assoc = asyncio.run(_echo(allowed.port))
    assert assoc.is_released, allowed.log()

    denied = node_factory("--workers", "1", "--allow-address", "192.0.2.0/24",
                          storage=tmp_path / "denied")
    assoc = asyncio.run(_echo(denied.port))
    assert not assoc.is_established and not assoc.is_rejected
    assert assoc.is_aborted
    assert denied.running, denied.log()
