"""``pynetdicom.pdu`` for the compatibility run: pynetdicom's PDU class names bound to the
engine's PDU classes (PS3.8 9.3). Their constructors and methods are the engine's, so a
test that drives pynetdicom's PDU internals fails, as the expectation list says."""

from engine._pdu import (
    AAbort as A_ABORT_RQ,
    AAssociateAC as A_ASSOCIATE_AC,
    AAssociateRJ as A_ASSOCIATE_RJ,
    AAssociateRQ as A_ASSOCIATE_RQ,
    AReleaseRP as A_RELEASE_RP,
    AReleaseRQ as A_RELEASE_RQ,
    PDataTF as P_DATA_TF,
)

__all__ = ["A_ASSOCIATE_RQ", "A_ASSOCIATE_AC", "A_ASSOCIATE_RJ", "P_DATA_TF",
           "A_RELEASE_RQ", "A_RELEASE_RP", "A_ABORT_RQ"]
