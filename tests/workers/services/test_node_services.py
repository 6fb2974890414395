"""build_services: which services a node offers for each setting, and their contexts."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.dimse import C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, C_STORE_RQ, N_ACTION_RQ
from storage import PendingRequests, PosixInstanceStore, SqliteCatalog
from tests.storage import make_config
from workers.services import COMMITMENT_DIRECTORY, build_services
from workers.services.query_model import PATIENT_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE

CT = "1.2.840.10008.5.1.4.1.1.2"
COMMITMENT = "1.2.840.10008.1.20.1"


def _build(tmp_path: Path, **options: object):
    store = PosixInstanceStore(make_config(tmp_path))
    catalog = SqliteCatalog(tmp_path / "index.sqlite")
    return build_services(store, called_ae="NODE", catalog=catalog,
                          pending=PendingRequests(tmp_path, COMMITMENT_DIRECTORY), **options)


def _abstracts(services) -> set[str]:
    return {str(cx.abstract_syntax) for cx in services.contexts}


def test_everything_is_on_by_default(tmp_path: Path) -> None:
    services = _build(tmp_path)
    assert {PATIENT_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE, COMMITMENT, CT} <= _abstracts(services)
    for command, sop_class in ((C_FIND_RQ, PATIENT_ROOT_FIND), (C_GET_RQ, STUDY_ROOT_GET),
                               (C_MOVE_RQ, STUDY_ROOT_MOVE), (N_ACTION_RQ, COMMITMENT), (C_STORE_RQ, CT)):
        assert services.registry.lookup(command, sop_class) is not None
    storage_cx = next(cx for cx in services.contexts if str(cx.abstract_syntax) == CT)
    assert (storage_cx.scu_role, storage_cx.scp_role) == (True, True)  # a C-GET SCU may take the SCP role


@pytest.mark.parametrize("switch", ["query", "retrieve", "commitment"])
def test_each_service_can_be_switched_off(tmp_path: Path, switch: str) -> None:
    services = _build(tmp_path, **{switch: False})
    gone = {"query": {PATIENT_ROOT_FIND}, "retrieve": {STUDY_ROOT_GET, STUDY_ROOT_MOVE},
            "commitment": {COMMITMENT}}[switch]
    assert not gone & _abstracts(services)
    assert (services.commitment is None) == (switch == "commitment")
    storage_cx = next(cx for cx in services.contexts if str(cx.abstract_syntax) == CT)
    assert (storage_cx.scu_role is None) == (switch == "retrieve")


def test_without_a_catalog_only_verification_and_storage(tmp_path: Path) -> None:
    services = build_services(PosixInstanceStore(make_config(tmp_path)), called_ae="NODE")
    assert not {PATIENT_ROOT_FIND, STUDY_ROOT_GET, COMMITMENT} & _abstracts(services)


def test_commitment_needs_somewhere_to_keep_requests(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        build_services(PosixInstanceStore(make_config(tmp_path)), called_ae="NODE",
                       catalog=SqliteCatalog(tmp_path / "index.sqlite"))


def test_draining_refuses_new_work_everywhere(tmp_path: Path) -> None:
    services = _build(tmp_path)
    services.stop_accepting()
    assert all(not p.accepting for p in services.providers if hasattr(p, "accepting"))
