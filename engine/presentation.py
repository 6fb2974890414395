"""Presentation contexts and their negotiation (PS3.8 7.1.1.13, 9.3.2.2, 9.3.3.2; PS3.7 D.3.3.4).

Theory of operation: a :class:`PresentationContext` is the user-facing description of
one abstract syntax and its transfer syntaxes, as in pynetdicom's documented API; it
validates every UID it is given (PS3.5 9.1) and prints in pynetdicom's format. The
negotiation itself is two pure functions over the wire-level structs of
:mod:`engine._pdu`:

* :func:`negotiate_as_acceptor` turns the A-ASSOCIATE-RQ's presentation context items and
  SCP/SCU Role Selection items into the A-ASSOCIATE-AC's result items, the accepted
  contexts and the role selection replies;
* :func:`negotiate_as_requestor` checks the A-ASSOCIATE-AC's answer against what was
  proposed and gives every proposed context its result, transfer syntax and roles.

Both are deterministic, never mutate their inputs and raise only typed errors
(:class:`ValueError`/:class:`TypeError` for bad local arguments,
:class:`engine._errors.RemoteProtocolError` for a peer breaking the standard).
UIDs that come from a peer are compared after dropping trailing NUL/space padding
(PS3.8 says the UIDs are not padded; some implementations pad anyway).

Roles: ``scu_role``/``scp_role`` are configuration (the role selection an acceptor is
willing to accept, or the one a requestor proposes); ``as_scu``/``as_scp`` are the
*local* AE's roles once negotiated. Before negotiation both are ``False``.

This module never does I/O, never reads the clock and keeps no global mutable state.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, NamedTuple, Sequence

from pydicom.uid import UID

from ._errors import (
    ABORT_REASON_INVALID_PARAMETER,
    ABORT_SOURCE_PROVIDER,
    LocalProtocolError,
    RemoteProtocolError,
)
from ._dimse import is_valid_uid
from ._pdu import PresentationContextAC, PresentationContextRQ, RoleSelection
from .sop_class import (
    DEFAULT_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    ImplicitVRLittleEndian,
    VerificationSOPClass,
)

__all__ = [
    "PresentationContext",
    "build_context",
    "validate_uid",
    "assign_context_ids",
    "role_selections_for",
    "negotiate_as_acceptor",
    "SupportedContexts",
    "negotiate_as_requestor",
    "VerificationPresentationContexts",
    "StoragePresentationContexts",
    "AllStoragePresentationContexts",
    "MAX_REQUESTED_CONTEXTS",
    "RESULT_ACCEPTANCE",
    "RESULT_USER_REJECTION",
    "RESULT_NO_REASON",
    "RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED",
    "RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED",
]

# PS3.8 9.3.3.2: Result/Reason field of a Presentation Context Item in an A-ASSOCIATE-AC.
RESULT_ACCEPTANCE = 0
RESULT_USER_REJECTION = 1
RESULT_NO_REASON = 2
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

_STATUS = {
    None: "Pending",
    RESULT_ACCEPTANCE: "Accepted",
    RESULT_USER_REJECTION: "User Rejected",
    RESULT_NO_REASON: "Provider Rejected",
    RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED: "Abstract Syntax Not Supported",
    RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED: "Transfer Syntax(es) Not Supported",
}

# PS3.8 9.3.2.2: a Presentation Context ID is an odd integer from 1 to 255, so one
# A-ASSOCIATE-RQ can propose at most 128 contexts.
MAX_REQUESTED_CONTEXTS = 128
_MAX_CONTEXT_ID = 255


def validate_uid(value: object, what: str = "UID") -> UID:
    """Return ``value`` as a :class:`pydicom.uid.UID` after checking PS3.5 9.1 syntax.

    Accepts ``str`` (including ``UID``) and ASCII ``bytes``. Raises :class:`TypeError`
    for any other type and :class:`ValueError` for an empty, over-long (> 64) or
    malformed UID -- the same rule as ``pydicom.uid.UID.is_valid``, minus the trailing
    newline that ``is_valid`` lets through.
    """
    if isinstance(value, UID):
        if value in _VALID_UIDS:  # checked before (a UID is a str: equal text, same key)
            return value
        text = str(value)
    elif isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"invalid {what} {value!r}: not ASCII") from None
    elif isinstance(value, str):
        text = str(value)
    else:
        raise TypeError(f"{what} must be str, pydicom UID or bytes, not {type(value).__name__}")
    uid = _VALID_UIDS.get(text)
    if uid is not None:
        return value if isinstance(value, UID) else uid
    if not is_valid_uid(text):
        raise ValueError(f"invalid {what} {text!r}: not a valid UID (PS3.5 9.1)")
    uid = UID(text)
    if len(_VALID_UIDS) >= _VALID_UIDS_MAX:
        _VALID_UIDS.clear()
    _VALID_UIDS[text] = uid
    return value if isinstance(value, UID) else uid


#: UIDs already checked, by their text: every association proposes the same hundred or
#: so abstract and transfer syntaxes, and building a pydicom UID costs microseconds (its
#: own validation). Peers choose these strings, so the memory is bounded (past it, it
#: starts again); only valid UIDs are kept.
_VALID_UIDS: dict[str, UID] = {}
_VALID_UIDS_MAX = 4096


def _validate_context_id(value: object) -> int | None:
    """Check a Presentation Context ID (PS3.8 9.3.2.2): None, or odd int in 1..255."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"context_id must be int or None, not {type(value).__name__}")
    if not (1 <= value <= _MAX_CONTEXT_ID) or value % 2 == 0:
        raise ValueError(f"context_id must be an odd integer from 1 to 255, not {value}")
    return value


def _validate_role(value: object, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{what} must be bool or None, not {type(value).__name__}")
    return value


def _uid_list(value: object, what: str) -> list[UID]:
    """One UID or an iterable of UIDs -> validated, de-duplicated list (order kept)."""
    items: Iterable[object]
    if isinstance(value, (str, bytes, bytearray)):
        items = [value]
    elif isinstance(value, (list, tuple)) or isinstance(value, Iterable):  # the common
        items = value  # types first: a check against the Iterable ABC costs more
    else:
        raise TypeError(f"{what} must be a UID or a list of UIDs, not {type(value).__name__}")
    out: list[UID] = []
    for item in items:
        uid = validate_uid(item, what)
        if uid not in out:
            out.append(uid)
    return out


class PresentationContext:
    """One presentation context: an abstract syntax and its transfer syntaxes.

    PS3.8 7.1.1.13 defines the Presentation Context Definition List; each item has a
    Presentation Context ID (odd, 1..255, PS3.8 9.3.2.2), one Abstract Syntax Name and
    one or more Transfer Syntax Names. After negotiation ``result`` holds the PS3.8
    9.3.3.2 Result/Reason and an accepted context has exactly one transfer syntax.

    Every setter validates: malformed UIDs and out-of-range values raise
    :class:`ValueError`, wrong types :class:`TypeError`. ``transfer_syntax`` returns a
    copy; change it with the setter or :meth:`add_transfer_syntax`.
    """

    __slots__ = (
        "_context_id",
        "_abstract_syntax",
        "_transfer_syntax",
        "_result",
        "_scu_role",
        "_scp_role",
        "_as_scu",
        "_as_scp",
    )

    def __init__(
        self,
        context_id: int | None = None,
        abstract_syntax: str | bytes | None = None,
        transfer_syntax: str | bytes | Iterable[str | bytes] = (),
        *,
        result: int | None = None,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        self._context_id: int | None = None
        self._abstract_syntax: UID | None = None
        self._transfer_syntax: list[UID] = []
        self._result: int | None = None
        self._scu_role: bool | None = None
        self._scp_role: bool | None = None
        self._as_scu = False
        self._as_scp = False
        self.context_id = context_id
        self.abstract_syntax = abstract_syntax
        self.transfer_syntax = transfer_syntax
        self.result = result
        self.scu_role = scu_role
        self.scp_role = scp_role

    @property
    def context_id(self) -> int | None:
        """The Presentation Context ID (PS3.8 9.3.2.2), or None before it is assigned."""
        return self._context_id

    @context_id.setter
    def context_id(self, value: int | None) -> None:
        self._context_id = _validate_context_id(value)

    @property
    def abstract_syntax(self) -> UID | None:
        """The Abstract Syntax Name (PS3.8 9.3.2.2.1), a :class:`pydicom.uid.UID`."""
        return self._abstract_syntax

    @abstract_syntax.setter
    def abstract_syntax(self, value: str | bytes | None) -> None:
        self._abstract_syntax = None if value is None else validate_uid(value, "abstract syntax")

    @property
    def transfer_syntax(self) -> list[UID]:
        """A copy of the Transfer Syntax Names (PS3.8 9.3.2.2.2), in preference order."""
        return list(self._transfer_syntax)

    @transfer_syntax.setter
    def transfer_syntax(self, value: str | bytes | Iterable[str | bytes]) -> None:
        self._transfer_syntax = _uid_list(value, "transfer syntax")

    def add_transfer_syntax(self, syntax: str | bytes) -> None:
        """Append one transfer syntax unless it is already present (validated)."""
        uid = validate_uid(syntax, "transfer syntax")
        if uid not in self._transfer_syntax:
            self._transfer_syntax.append(uid)

    @property
    def result(self) -> int | None:
        """The PS3.8 9.3.3.2 Result/Reason (0..4), or None before negotiation."""
        return self._result

    @result.setter
    def result(self, value: int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"result must be int or None, not {type(value).__name__}")
            if value not in _STATUS:
                raise ValueError(f"result must be 0 to 4 (PS3.8 9.3.3.2), not {value}")
        self._result = value

    @property
    def status(self) -> str:
        """The result in words: 'Accepted', 'User Rejected', ... or 'Pending'."""
        return _STATUS[self._result]

    @property
    def scu_role(self) -> bool | None:
        """SCU role in SCP/SCU Role Selection (PS3.7 D.3.3.4); None: no role selection."""
        return self._scu_role

    @scu_role.setter
    def scu_role(self, value: bool | None) -> None:
        self._scu_role = _validate_role(value, "scu_role")

    @property
    def scp_role(self) -> bool | None:
        """SCP role in SCP/SCU Role Selection (PS3.7 D.3.3.4); None: no role selection."""
        return self._scp_role

    @scp_role.setter
    def scp_role(self, value: bool | None) -> None:
        self._scp_role = _validate_role(value, "scp_role")

    @property
    def as_scu(self) -> bool:
        """Whether the local AE may act as SCU on this context (negotiated)."""
        return self._as_scu

    @as_scu.setter
    def as_scu(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"as_scu must be bool, not {type(value).__name__}")
        self._as_scu = value

    @property
    def as_scp(self) -> bool:
        """Whether the local AE may act as SCP on this context (negotiated)."""
        return self._as_scp

    @as_scp.setter
    def as_scp(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"as_scp must be bool, not {type(value).__name__}")
        self._as_scp = value

    def copy(self) -> PresentationContext:
        """An independent copy (the transfer syntax list is not shared)."""
        cx = PresentationContext.__new__(PresentationContext)
        for slot in self.__slots__:
            setattr(cx, slot, getattr(self, slot))
        cx._transfer_syntax = list(self._transfer_syntax)
        return cx

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, slot) for slot in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PresentationContext):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def __repr__(self) -> str:
        ts = [str(uid) for uid in self._transfer_syntax]
        abstract = None if self._abstract_syntax is None else str(self._abstract_syntax)
        return (
            f"PresentationContext(context_id={self._context_id!r}, "
            f"abstract_syntax={abstract!r}, transfer_syntax={ts!r}, result={self._result!r})"
        )

    def __str__(self) -> str:
        """The pynetdicom print format: optional ID, names, optional result."""
        lines = []
        if self._context_id is not None:
            lines.append(f"ID: {self._context_id}")
        if self._abstract_syntax is not None:
            lines.append(f"Abstract Syntax: {self._abstract_syntax.name}")
        lines.append("Transfer Syntax(es):")
        lines.extend(f"    ={uid.name}" for uid in self._transfer_syntax)
        if self._result is not None:
            lines.append(f"Result: {self.status}")
        return "\n".join(lines)


def build_context(
    abstract_syntax: str | bytes,
    transfer_syntax: str | bytes | Iterable[str | bytes] | None = None,
) -> PresentationContext:
    """A new :class:`PresentationContext` for ``abstract_syntax`` (PS3.8 7.1.1.13).

    ``transfer_syntax`` is one UID or a list of them; None gives Implicit VR Little
    Endian, Explicit VR Little Endian and Explicit VR Big Endian. Raises
    :class:`ValueError` for a malformed UID or an empty transfer syntax list.
    """
    if transfer_syntax is None:
        transfer_syntax = DEFAULT_TRANSFER_SYNTAXES
    cx = PresentationContext(abstract_syntax=validate_uid(abstract_syntax, "abstract syntax"))
    cx.transfer_syntax = transfer_syntax
    if not cx._transfer_syntax:
        raise ValueError("a presentation context needs at least one transfer syntax")
    return cx


def assign_context_ids(contexts: Sequence[PresentationContext]) -> list[PresentationContext]:
    """Copies of ``contexts`` numbered 1, 3, 5 ... (PS3.8 9.3.2.2), ready to propose.

    Raises :class:`ValueError` for more than 128 contexts, a context with no abstract
    syntax or one with no transfer syntax (PS3.8 7.1.1.13 requires at least one).
    """
    if len(contexts) > MAX_REQUESTED_CONTEXTS:
        raise ValueError(
            f"at most {MAX_REQUESTED_CONTEXTS} presentation contexts can be proposed, "
            f"not {len(contexts)}"
        )
    out = []
    for index, cx in enumerate(contexts):
        if cx.abstract_syntax is None or not cx._transfer_syntax:
            raise ValueError(f"incomplete presentation context {cx!r}")
        numbered = cx.copy()
        numbered.context_id = 2 * index + 1
        numbered.result = None
        numbered.as_scu = numbered.as_scp = False
        out.append(numbered)
    return out


def _proposal(cx: PresentationContext) -> tuple[bool, bool] | None:
    """The requestor's role proposal for ``cx``: None, or (scu, scp) with None as False."""
    if cx.scu_role is None and cx.scp_role is None:
        return None
    return bool(cx.scu_role), bool(cx.scp_role)


def role_selections_for(contexts: Sequence[PresentationContext]) -> list[RoleSelection]:
    """The SCP/SCU Role Selection items a requestor sends for ``contexts`` (PS3.7 D.3.3.4).

    One item per SOP class whose context sets ``scu_role`` or ``scp_role`` (an unset one
    counts as False). Raises :class:`ValueError` when a proposal has both roles False
    (PS3.7 D.3.3.4 allows only SCU, SCP or both) or when two contexts with the same
    abstract syntax propose different roles (the item is per SOP class).
    """
    chosen: dict[str, tuple[bool, bool]] = {}
    for cx in contexts:
        proposal = _proposal(cx)
        if proposal is None or cx.abstract_syntax is None:
            continue
        if proposal == (False, False):
            raise ValueError(f"role selection for {cx.abstract_syntax} proposes neither role")
        uid = str(cx.abstract_syntax)
        if chosen.setdefault(uid, proposal) != proposal:
            raise ValueError(f"conflicting role selections proposed for {uid}")
    return [
        RoleSelection(sop_class_uid=uid, scu_role=scu, scp_role=scp)
        for uid, (scu, scp) in chosen.items()
    ]


def _peer_uid(value: str) -> str:
    """A UID received from a peer, without NUL/space padding some peers add."""
    return str(value).rstrip("\x00 ")


def _first_roles(items: Iterable[RoleSelection]) -> dict[str, tuple[bool, bool]]:
    """SOP class UID -> (scu, scp) from role selection items; the first per class counts.

    PS3.7 D.3.3.4 allows one item per SOP class; a peer that repeats one is not worth
    an abort, so later repeats are ignored.
    """
    roles: dict[str, tuple[bool, bool]] = {}
    for item in items:
        roles.setdefault(_peer_uid(item.sop_class_uid), (bool(item.scu_role), bool(item.scp_role)))
    return roles


class _Supported(NamedTuple):
    transfer_syntaxes: frozenset[str]
    context: PresentationContext


def _supported_table(supported: Iterable[PresentationContext]) -> dict[str, _Supported]:
    """abstract syntax -> what we accept; repeated abstract syntaxes are merged."""
    table: dict[str, _Supported] = {}
    for cx in supported:
        if not isinstance(cx, PresentationContext):
            raise TypeError(f"supported contexts must be PresentationContext, not {cx!r}")
        if cx.abstract_syntax is None:
            raise ValueError(f"supported context without an abstract syntax: {cx!r}")
        key = str(cx.abstract_syntax)
        syntaxes = frozenset(str(uid) for uid in cx._transfer_syntax)
        if key in table:
            # The first context's roles stand; transfer syntaxes are pooled.
            syntaxes |= table[key].transfer_syntaxes
            table[key] = _Supported(syntaxes, table[key].context)
        else:
            table[key] = _Supported(syntaxes, cx)
    return table


class SupportedContexts:
    """Supported contexts prepared once, for an acceptor that negotiates many times.

    Building the lookup from a node's ~200 storage contexts, each with dozens of
    transfer syntaxes, costs about a millisecond: an acceptor pays it once, not per
    association. The contexts must not be changed after preparing them.

    ``any_other``: a template for every abstract syntax not listed, provided it is a
    valid UID (PS3.5 9.1) -- its transfer syntaxes and roles apply (an archive taking
    private or newer storage SOP classes, like DCMTK storescp's promiscuous mode).
    """

    __slots__ = ("table", "any_other")

    def __init__(self, supported: Iterable[PresentationContext],
                 any_other: PresentationContext | None = None) -> None:
        self.table = _supported_table(supported)
        self.any_other = None
        if any_other is not None:
            self.any_other = _supported_table([any_other]).popitem()[1]

    def get(self, abstract_syntax: str) -> _Supported | None:
        entry = self.table.get(abstract_syntax)
        if entry is None and self.any_other is not None and is_valid_uid(abstract_syntax):
            entry = self.any_other
        return entry


def negotiate_as_acceptor(
    rq_contexts: Sequence[PresentationContextRQ],
    supported: Sequence[PresentationContext] | SupportedContexts,
    role_selections: Sequence[RoleSelection] = (),
) -> tuple[list[PresentationContextAC], list[PresentationContext], list[RoleSelection]]:
    """Answer an A-ASSOCIATE-RQ's presentation contexts (PS3.8 9.3.3.2, PS3.7 D.3.3.4).

    Returns ``(ac_items, accepted, role_replies)``: one A-ASSOCIATE-AC Presentation
    Context Item per proposed context, in the proposed order; the accepted contexts as
    :class:`PresentationContext` (result 0, the one chosen transfer syntax, the local
    roles in ``as_scu``/``as_scp``); and the SCP/SCU Role Selection items to return.

    Results, checked in this order:

    * 2 (no-reason, provider rejection): the context ID is even, 0, over 255 or used by
      more than one proposed context. PS3.8 9.3.2.2 makes these a requestor error; the
      decoder has already checked the PDU's structure, so instead of aborting the whole
      association we refuse just the contexts concerned. Every context sharing a
      duplicated ID is refused, since an answer naming that ID would be ambiguous.
    * 3 (abstract-syntax-not-supported): no supported context has the abstract syntax.
    * 4 (transfer-syntaxes-not-supported): none of the proposed transfer syntaxes is
      supported. Otherwise the *first proposed* one we support is chosen: the
      requestor lists them in its order of preference.
    * 1 (user-rejection): role selection leaves neither role (below).
    * 0 (acceptance).

    Role selection: the requestor's first item per SOP class counts. If it sent none,
    or our supported context has ``scu_role`` or ``scp_role`` None, the proposal is
    ignored and the default roles apply (requestor SCU, acceptor SCP), with no reply
    item. Otherwise a role is granted when the requestor proposed it *and* we allow it
    (PS3.7 D.3.3.4: the acceptor shall not accept a role that was not proposed); if
    neither is granted the context is refused with result 1. One reply item is
    returned per SOP class that had a proposal and an accepted context; none is ever
    returned for a SOP class the requestor sent no item for. Acceptor roles are the
    mirror image: we are SCP when the requestor is SCU and SCU when it is SCP.

    For a refused context the AC item's transfer syntax is not significant (PS3.8
    9.3.3.2); the first proposed one (or Implicit VR Little Endian) fills the field so
    that strict decoders still see a valid UID.
    """
    prepared = supported if isinstance(supported, SupportedContexts) else SupportedContexts(supported)
    proposals = _first_roles(role_selections)
    id_counts = Counter(rq.context_id for rq in rq_contexts)

    ac_items: list[PresentationContextAC] = []
    accepted: list[PresentationContext] = []
    granted: dict[str, tuple[bool, bool]] = {}
    for rq in rq_contexts:
        cid = rq.context_id
        proposed = [_peer_uid(ts) for ts in rq.transfer_syntaxes]
        filler = proposed[0] if proposed else str(ImplicitVRLittleEndian)
        abstract = _peer_uid(rq.abstract_syntax)
        entry = prepared.get(abstract)
        chosen = None
        if cid % 2 == 0 or not (1 <= cid <= _MAX_CONTEXT_ID) or id_counts[cid] > 1:
            result = RESULT_NO_REASON
        elif entry is None:
            result = RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
        else:
            chosen = next((ts for ts in proposed if ts in entry.transfer_syntaxes), None)
            result = RESULT_ACCEPTANCE
            if chosen is None:
                result = RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
        roles: tuple[bool, bool] | None = None  # (requestor SCU, requestor SCP) if negotiated
        if result == RESULT_ACCEPTANCE and entry is not None:
            proposal = proposals.get(abstract)
            ours = entry.context
            if proposal is not None and ours.scu_role is not None and ours.scp_role is not None:
                roles = (proposal[0] and ours.scu_role, proposal[1] and ours.scp_role)
                if roles == (False, False):
                    result = RESULT_USER_REJECTION
        if result != RESULT_ACCEPTANCE or chosen is None or entry is None:
            ac_items.append(PresentationContextAC(cid, result, filler))
            continue
        ac_items.append(PresentationContextAC(cid, result, chosen))
        cx = PresentationContext(
            context_id=cid,
            abstract_syntax=abstract,
            transfer_syntax=[chosen],
            result=RESULT_ACCEPTANCE,
            scu_role=entry.context.scu_role,
            scp_role=entry.context.scp_role,
        )
        if roles is None:
            cx.as_scu, cx.as_scp = False, True
        else:
            granted[abstract] = roles
            cx.as_scu, cx.as_scp = roles[1], roles[0]
        accepted.append(cx)

    replies = [
        RoleSelection(sop_class_uid=uid, scu_role=granted[uid][0], scp_role=granted[uid][1])
        for uid in proposals
        if uid in granted
    ]
    return ac_items, accepted, replies


def negotiate_as_requestor(
    requested: Sequence[PresentationContext],
    ac_contexts: Sequence[PresentationContextAC],
    role_replies: Sequence[RoleSelection] = (),
) -> list[PresentationContext]:
    """Apply an A-ASSOCIATE-AC's answer to the contexts we proposed (PS3.8 9.3.3.2).

    ``requested`` are the proposed contexts (IDs assigned, see
    :func:`assign_context_ids`; their ``scu_role``/``scp_role`` are our role proposal).
    Returns copies of all of them, sorted by context ID, each with ``result`` set.
    Accepted ones (result 0) carry exactly the one transfer syntax the acceptor chose
    and the local roles; refused ones keep the proposed transfer syntaxes and have
    neither role. A proposed context the acceptor did not answer is treated as refused
    with result 2 (no-reason).

    Roles (PS3.7 D.3.3.4): without a proposal from us, or without a reply item for the
    SOP class, the defaults apply (we are SCU only). Otherwise we hold a role when we
    proposed it and the acceptor returned 1 for it; a 1 for a role we did not propose
    is ignored, as the standard requires. The acceptor's first reply per SOP class
    counts.

    Raises :class:`engine._errors.RemoteProtocolError` (A-ABORT source 2, reason 6,
    invalid-PDU-parameter value, PS3.8 9.3.8) when an item names a context ID we did not
    propose or answers one twice, when a result is not 0..4, or when an accepted
    context's transfer syntax is not one we proposed for it. Raises
    :class:`engine._errors.LocalProtocolError` when ``requested`` itself is unusable
    (a context without an ID or abstract syntax, or two with the same ID).
    """
    by_id: dict[int, PresentationContext] = {}
    for cx in requested:
        if cx.context_id is None or cx.abstract_syntax is None:
            raise LocalProtocolError(f"requested context without ID or abstract syntax: {cx!r}")
        if cx.context_id in by_id:
            raise LocalProtocolError(f"two requested contexts have ID {cx.context_id}")
        by_id[cx.context_id] = cx

    answers: dict[int, tuple[int, UID | None]] = {}
    for ac in ac_contexts:
        cid = ac.context_id
        if cid not in by_id:
            raise _invalid(f"A-ASSOCIATE-AC answers context ID {cid}, which was not proposed")
        if cid in answers:
            raise _invalid(f"A-ASSOCIATE-AC answers context ID {cid} twice")
        if ac.result not in range(RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED + 1):
            raise _invalid(f"A-ASSOCIATE-AC context {cid} has result {ac.result}, not 0 to 4")
        chosen: UID | None = None
        if ac.result == RESULT_ACCEPTANCE:
            name = _peer_uid(ac.transfer_syntax)
            chosen = next((uid for uid in by_id[cid]._transfer_syntax if uid == name), None)
            if chosen is None:
                raise _invalid(
                    f"A-ASSOCIATE-AC accepts context {cid} with transfer syntax "
                    f"{name!r}, which was not proposed for it"
                )
        answers[cid] = (ac.result, chosen)

    replies = _first_roles(role_replies)

    out = []
    for cid in sorted(by_id):
        cx = by_id[cid].copy()
        result, chosen = answers.get(cid, (RESULT_NO_REASON, None))
        cx.result = result
        cx.as_scu = cx.as_scp = False
        if chosen is not None:
            cx.transfer_syntax = [chosen]
            proposal = _proposal(cx)
            reply = replies.get(str(cx.abstract_syntax))
            if proposal is None or reply is None:
                cx.as_scu = True
            else:
                cx.as_scu = proposal[0] and reply[0]
                cx.as_scp = proposal[1] and reply[1]
        out.append(cx)
    return out


def _invalid(message: str) -> RemoteProtocolError:
    """PS3.8 9.3.8: A-ABORT, service-provider source, invalid-PDU-parameter value."""
    return RemoteProtocolError(
        message,
        abort_source=ABORT_SOURCE_PROVIDER,
        abort_reason=ABORT_REASON_INVALID_PARAMETER,
    )


# The pynetdicom-style ready-made lists. Each holds its own PresentationContext
# objects; the AE configuration copies what it is given, so these are never altered
# by configuring an AE.
VerificationPresentationContexts: list[PresentationContext] = [
    build_context(VerificationSOPClass)
]
# Every Storage SOP Class with the default transfer syntaxes. Unlike pynetdicom's
# 120-item list this is complete (an SCP wants them all), so it is longer than the
# 128 contexts one A-ASSOCIATE-RQ can propose: use it for supported contexts.
StoragePresentationContexts: list[PresentationContext] = [
    build_context(uid) for uid in STORAGE_SOP_CLASSES
]
AllStoragePresentationContexts: list[PresentationContext] = [
    build_context(uid) for uid in STORAGE_SOP_CLASSES
]
