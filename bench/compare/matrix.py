"""What ``bench.compare`` runs: the loads, the clients, the servers and which cells exist.

Theory of operation: definitions only. A cell is one load (kind x concurrent
associations), one client and one server; :func:`plan` lists the (load, associations)
pairs a selection runs, :func:`in_matrix` says which cells the default leaves out.
Changing the matrix changes this module and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Load", "LOADS", "ASSOCIATIONS", "DEFAULT_SKIP", "in_matrix", "CLIENTS", "CLIENT_LABELS",
    "ServerSpec", "server_specs", "reference_key", "plan",
]


@dataclass(frozen=True)
class Load:
    """A kind of instance and how many of them one cell sends (default, --quick)."""

    key: str
    label: str
    count: int
    quick: int


LOADS: dict[str, Load] = {
    "tiny": Load("tiny", "tiny (~2 kB)", 1000, 200),
    "ct": Load("ct", "CT 512x512x16 (~0.5 MB)", 300, 40),
    "big": Load("big", "multi-frame 80 MB", 8, 2),
}
ASSOCIATIONS = (1, 4, 16)
#: (load, associations, server or None for all) the default matrix leaves out, to stay
#: within ~25 minutes on 2 CPUs (--full runs them): 8 instances of 80 MB over 16
#: associations leave half of them idle, and Orthanc, which syncs file and index per
#: instance, takes ~50 ms an instance on one association (over a minute a cell).
DEFAULT_SKIP = {("big", 16, None), ("tiny", 1, "orthanc"), ("ct", 1, "orthanc")}


def in_matrix(load: str, associations: int, server: str, full: bool) -> bool:
    return full or not ({(load, associations, None), (load, associations, server)}
                        & DEFAULT_SKIP)


CLIENTS = ("storescu", "load")
CLIENT_LABELS = {"storescu": "DCMTK storescu", "load": "scpfleet load"}


@dataclass(frozen=True)
class ServerSpec:
    key: str
    label: str
    kind: str  # scpfleet | storescp | pynetdicom | orthanc (bench.servers.KINDS)
    workers: int = 0
    durability: str = ""
    #: Which (load, client) cells this server takes part in (None: all).
    loads: tuple[str, ...] | None = None
    clients: tuple[str, ...] | None = None

    def takes(self, load: str, client: str) -> bool:
        return (self.loads is None or load in self.loads) and (
            self.clients is None or client in self.clients)


def server_specs(cpus: int) -> list[ServerSpec]:
    """The servers, in their base order; with one CPU the "N workers" ones are dropped."""
    specs = []
    for workers in dict.fromkeys((1, cpus)):
        for durability in ("none", "fsync"):
            specs.append(ServerSpec(f"scpfleet-{workers}w-{durability}",
                                    f"scpfleet {workers}w {durability}", "scpfleet",
                                    workers, durability))
    specs.append(ServerSpec("storescp", "storescp --fork", "storescp"))
    specs.append(ServerSpec("pynetdicom", "pynetdicom storescp", "pynetdicom"))
    specs.append(ServerSpec("orthanc", "Orthanc", "orthanc", loads=("tiny", "ct"),
                            clients=("load",)))
    return specs


def reference_key(cpus: int) -> str:
    """The scpfleet configuration the ratios are about: N workers, no syncing."""
    return f"scpfleet-{cpus}w-none"


def plan(loads: Sequence[str], associations: Sequence[int], clients: Sequence[str],
         specs: Sequence[ServerSpec], full: bool) -> list[tuple[str, int]]:
    """The (load, associations) pairs in which at least one server takes a client."""
    cells = []
    for load in loads:
        for assoc in associations:
            if any(s.takes(load, c) and in_matrix(load, assoc, s.key, full)
                   for s in specs for c in clients):
                cells.append((load, assoc))
    return cells
