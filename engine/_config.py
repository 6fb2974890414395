"""The configuration half of the pynetdicom-style ApplicationEntity.

Theory of operation: :class:`ApplicationEntityConfig` holds everything an AE *is* --
its title, timeouts, limits, identification and the presentation contexts it requests
and supports -- with the attribute names, defaults and semantics of pynetdicom's
documented ``ApplicationEntity`` (1.5 era: AE titles are ``bytes``), so existing
scripts port by changing imports. Every setter validates and raises a typed error
(:class:`ValueError` for a bad value, :class:`TypeError` for a wrong type); nothing is
silently corrected except the non-significant leading/trailing spaces of AE titles.

The network half (``associate``, ``start_server``, ``shutdown``,
``active_associations``) lives in a subclass elsewhere and reads this object; it is
passed in, never a module global. This module never does I/O.

Identification: the default Implementation Class UID (PS3.7 D.3.3.2) sits under
:data:`SCPFLEET_UID_ROOT`, the ``2.25`` UUID-derived root (PS3.5 B.2) made once from
UUID ``145ad20a-fe92-4dcb-b8fe-e8cd015fab97``; arc ``.1`` names this implementation.
"""

from __future__ import annotations

import math
from typing import Iterable

from pydicom.uid import UID

from .presentation import (
    MAX_REQUESTED_CONTEXTS,
    PresentationContext,
    build_context,
    validate_uid,
)
from .sop_class import DEFAULT_TRANSFER_SYNTAXES

__all__ = [
    "ApplicationEntityConfig",
    "validate_ae_title",
    "SCPFLEET_UID_ROOT",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "DEFAULT_AE_TITLE",
]

# PS3.5 B.2: 2.25.<UUID as a decimal integer>, UUID 145ad20a-fe92-4dcb-b8fe-e8cd015fab97.
SCPFLEET_UID_ROOT = "2.25.27056126810050906982600249889020423063"
IMPLEMENTATION_CLASS_UID = UID(SCPFLEET_UID_ROOT + ".1")
# PS3.7 D.3.3.2: up to 16 characters; bump with each release that changes the wire.
IMPLEMENTATION_VERSION_NAME = b"SCPFLEET_010"
# The reference API's default AE title, kept so ported scripts behave the same.
DEFAULT_AE_TITLE = b"PYNETDICOM"

# PS3.5 Table 6.2-1 (AE VR): at most 16 characters; PS3.7 D.3.3.2: the same for the
# Implementation Version Name.
_AE_TITLE_MAX = 16
_VERSION_NAME_MAX = 16
# PS3.8 9.3.1: Maximum Length Received is a 32-bit unsigned field.
_MAX_PDU_LIMIT = 0xFFFFFFFF
# PS3.8 9.3.5.1: a PDV item needs 4 length + 1 context ID + 1 header bytes plus at least
# one data byte, so a nonzero maximum below 7 could never carry any data.
_MIN_PDU_SIZE = 7
# The reference API's documented defaults.
_DEFAULT_ACSE_TIMEOUT = 30
_DEFAULT_DIMSE_TIMEOUT = 30
_DEFAULT_NETWORK_TIMEOUT = 60
_DEFAULT_MAXIMUM_ASSOCIATIONS = 10
_DEFAULT_MAXIMUM_PDU_SIZE = 16382


def _repertoire_text(value: object, what: str) -> str:
    """``value`` (str or bytes) as text of the DICOM Default Character Repertoire.

    PS3.5 6.1.2 / 6.2: ISO 646 G0 graphic characters plus space (20H..7EH); AE and SH
    values also exclude backslash (5CH) and all control characters.
    """
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(
                f"{what} {value!r} is not in the Default Character Repertoire"
            ) from None
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    bad = [ch for ch in text if not (" " <= ch <= "~") or ch == "\\"]
    if bad:
        raise ValueError(
            f"{what} {value!r} contains {bad[0]!r}: only printable ASCII other than "
            "backslash is allowed (PS3.5 6.2)"
        )
    return text


def validate_ae_title(value: object, what: str = "AE title") -> bytes:
    """Return AE title ``value`` as ``bytes`` without its non-significant spaces.

    PS3.5 Table 6.2-1 (AE): 1 to 16 characters of the Default Character Repertoire,
    no backslash or control characters, leading and trailing spaces not significant,
    not all spaces. Accepts ``str`` or ``bytes``; raises :class:`TypeError` for other
    types and :class:`ValueError` for anything else that breaks those rules (a title
    is never truncated).
    """
    text = _repertoire_text(value, what).strip(" ")
    if not text:
        raise ValueError(f"{what} {value!r} is empty or consists entirely of only spaces")
    if len(text) > _AE_TITLE_MAX:
        raise ValueError(f"{what} {value!r} is longer than {_AE_TITLE_MAX} characters")
    return text.encode("ascii")


def _pad_ae_title(title: bytes) -> bytes:
    """The 16-byte, space-padded form used on the wire (PS3.8 9.3.2, Table 9-11)."""
    return title.ljust(_AE_TITLE_MAX, b" ")


def _validate_timeout(value: object, what: str) -> float | int | None:
    """A timeout in seconds: None (no timeout) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be int, float or None, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0 or None (no timeout), not {value}")
    return value


def _validate_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    return value


def _uid_args(transfer_syntax: object) -> list[UID]:
    """The transfer_syntax argument of the remove_* methods: one UID or a list."""
    if isinstance(transfer_syntax, (str, bytes, bytearray)):
        return [validate_uid(transfer_syntax, "transfer syntax")]
    if not isinstance(transfer_syntax, Iterable):
        raise TypeError("transfer_syntax must be a UID or a list of UIDs")
    return [validate_uid(ts, "transfer syntax") for ts in transfer_syntax]


def _context_copy(cx: object) -> PresentationContext:
    """A fresh configuration copy of ``cx``: syntaxes and roles, no negotiation state.

    An item that is not a :class:`PresentationContext` makes the list a wrong *value*
    for ``requested_contexts``/``supported_contexts`` (a list is the right type):
    ValueError, as the reference implementation raises.
    """
    if not isinstance(cx, PresentationContext):
        raise ValueError(
            f"presentation contexts must be PresentationContext items, not {type(cx).__name__}"
        )
    if cx.abstract_syntax is None:
        raise ValueError(f"presentation context has no abstract syntax: {cx!r}")
    copy = build_context(cx.abstract_syntax, cx.transfer_syntax)
    copy.scu_role = cx.scu_role
    copy.scp_role = cx.scp_role
    return copy


class ApplicationEntityConfig:
    """What a DICOM Application Entity is configured to be (pynetdicom's AE, config part).

    ``ae_title`` defaults to ``b'PYNETDICOM'`` as in the reference API. See the
    properties for each setting's default and the PS3.x section it configures.
    """

    def __init__(self, ae_title: bytes | str = DEFAULT_AE_TITLE) -> None:
        self._ae_title = b""
        self.ae_title = ae_title
        self._acse_timeout: float | int | None = _DEFAULT_ACSE_TIMEOUT
        self._dimse_timeout: float | int | None = _DEFAULT_DIMSE_TIMEOUT
        self._network_timeout: float | int | None = _DEFAULT_NETWORK_TIMEOUT
        self._connection_timeout: float | int | None = None
        self._default_transfer_syntaxes: list[UID] = list(DEFAULT_TRANSFER_SYNTAXES)
        self._maximum_associations = _DEFAULT_MAXIMUM_ASSOCIATIONS
        self._maximum_pdu_size = _DEFAULT_MAXIMUM_PDU_SIZE
        self._require_calling_aet: list[bytes] = []
        self._require_called_aet = False
        self._implementation_class_uid = IMPLEMENTATION_CLASS_UID
        self._implementation_version_name: bytes | None = IMPLEMENTATION_VERSION_NAME
        self._requested_contexts: list[PresentationContext] = []
        self._supported_contexts: dict[str, PresentationContext] = {}

    # -- identity -------------------------------------------------------------

    @property
    def ae_title(self) -> bytes:
        """The local AE title as 16 bytes, space padded (PS3.8 9.3.2, PS3.5 6.2 AE).

        Set with ``str`` or ``bytes``: 1 to 16 characters of the Default Character
        Repertoire without backslash or control characters, not all spaces; leading
        and trailing spaces are dropped as non-significant. Else ValueError/TypeError.
        """
        return _pad_ae_title(self._ae_title)

    @ae_title.setter
    def ae_title(self, value: bytes | str) -> None:
        self._ae_title = validate_ae_title(value)

    @property
    def implementation_class_uid(self) -> UID:
        """The Implementation Class UID sent in A-ASSOCIATE (PS3.7 D.3.3.2).

        Default :data:`IMPLEMENTATION_CLASS_UID`. Setting a malformed UID raises
        ValueError.
        """
        return self._implementation_class_uid

    @implementation_class_uid.setter
    def implementation_class_uid(self, value: str | bytes) -> None:
        self._implementation_class_uid = validate_uid(value, "implementation class UID")

    @property
    def implementation_version_name(self) -> bytes | None:
        """The Implementation Version Name (PS3.7 D.3.3.2), or None to send none.

        Default ``b'SCPFLEET_010'``. Set with ``str``/``bytes`` of 1 to 16 characters of
        the Default Character Repertoire without backslash, not all spaces.
        """
        return self._implementation_version_name

    @implementation_version_name.setter
    def implementation_version_name(self, value: bytes | str | None) -> None:
        if value is None:
            self._implementation_version_name = None
            return
        text = _repertoire_text(value, "implementation version name")
        if not text.strip(" ") or len(text) > _VERSION_NAME_MAX:
            raise ValueError(
                f"implementation version name {value!r} must be 1 to {_VERSION_NAME_MAX} "
                "characters, not all spaces"
            )
        self._implementation_version_name = text.encode("ascii")

    # -- timeouts and limits --------------------------------------------------

    @property
    def acse_timeout(self) -> float | int | None:
        """Seconds to wait for association messages; None: no timeout (default 30)."""
        return self._acse_timeout

    @acse_timeout.setter
    def acse_timeout(self, value: float | int | None) -> None:
        self._acse_timeout = _validate_timeout(value, "acse_timeout")

    @property
    def dimse_timeout(self) -> float | int | None:
        """Seconds to wait for DIMSE messages; None: no timeout (default 30)."""
        return self._dimse_timeout

    @dimse_timeout.setter
    def dimse_timeout(self, value: float | int | None) -> None:
        self._dimse_timeout = _validate_timeout(value, "dimse_timeout")

    @property
    def network_timeout(self) -> float | int | None:
        """Seconds to wait for network messages; None: no timeout (default 60)."""
        return self._network_timeout

    @network_timeout.setter
    def network_timeout(self, value: float | int | None) -> None:
        self._network_timeout = _validate_timeout(value, "network_timeout")

    @property
    def connection_timeout(self) -> float | int | None:
        """Seconds to wait for the TCP connection of an association we request; None
        (default): the network timeout bounds it. (A pynetdicom 2.0+ setting.)"""
        return self._connection_timeout

    @connection_timeout.setter
    def connection_timeout(self, value: float | int | None) -> None:
        self._connection_timeout = _validate_timeout(value, "connection_timeout")

    # -- default transfer syntaxes --------------------------------------------

    @property
    def default_transfer_syntaxes(self) -> list[UID]:
        """What ``add_requested_context``/``add_supported_context`` use when given no
        transfer syntax: Implicit VR LE, Explicit VR LE, Explicit VR BE (the reference
        API's). Set :data:`engine.sop_class.DEFAULT_TRANSFER_SYNTAXES_WITH_DEFLATED` for
        pynetdicom 2.0+'s four (Deflated Explicit VR LE added), or any list of UIDs."""
        return list(self._default_transfer_syntaxes)

    @default_transfer_syntaxes.setter
    def default_transfer_syntaxes(self, value: Iterable[str | bytes]) -> None:
        syntaxes = _uid_args(value)
        if not syntaxes:
            raise ValueError("default_transfer_syntaxes needs at least one transfer syntax")
        self._default_transfer_syntaxes = syntaxes

    @property
    def maximum_associations(self) -> int:
        """Most simultaneous associations requested by peers (default 10, at least 1).

        Associations this AE requests itself are not counted.
        """
        return self._maximum_associations

    @maximum_associations.setter
    def maximum_associations(self, value: int) -> None:
        value = _validate_int(value, "maximum_associations")
        if value < 1:
            raise ValueError(f"maximum_associations must be at least 1, not {value}")
        self._maximum_associations = value

    @property
    def maximum_pdu_size(self) -> int:
        """Maximum Length Received we advertise, in bytes (PS3.8 D.1); 0: no maximum.

        Default 16382. Any other value must be 7..4294967295: the field is 32 bits and
        a smaller PDU could not hold a PDV with data (PS3.8 9.3.5.1).
        """
        return self._maximum_pdu_size

    @maximum_pdu_size.setter
    def maximum_pdu_size(self, value: int) -> None:
        value = _validate_int(value, "maximum_pdu_size")
        if value != 0 and not (_MIN_PDU_SIZE <= value <= _MAX_PDU_LIMIT):
            raise ValueError(
                f"maximum_pdu_size must be 0 (no maximum) or {_MIN_PDU_SIZE} to "
                f"{_MAX_PDU_LIMIT}, not {value}"
            )
        self._maximum_pdu_size = value

    # -- acceptor checks --------------------------------------------------------

    @property
    def require_calling_aet(self) -> list[bytes]:
        """Calling AE titles allowed to associate, as 16-byte padded ``bytes``.

        An empty list (default) allows any. Set with a list of ``str``/``bytes``
        titles, each validated like :attr:`ae_title`. Acceptor only (PS3.8 9.3.4
        reason calling-AE-title-not-recognized).
        """
        return [_pad_ae_title(title) for title in self._require_calling_aet]

    @require_calling_aet.setter
    def require_calling_aet(self, value: Iterable[bytes | str]) -> None:
        if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
            raise TypeError("require_calling_aet must be a list of AE titles")
        titles: list[bytes] = []
        for item in value:
            title = validate_ae_title(item, "required calling AE title")
            if title not in titles:
                titles.append(title)
        self._require_calling_aet = titles

    @property
    def require_called_aet(self) -> bool:
        """Whether the Called AE Title must match :attr:`ae_title` (default False).

        Acceptor only (PS3.8 9.3.4 reason called-AE-title-not-recognized).
        """
        return self._require_called_aet

    @require_called_aet.setter
    def require_called_aet(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"require_called_aet must be bool, not {type(value).__name__}")
        self._require_called_aet = value

    # -- requested contexts (association requestor) ---------------------------

    @property
    def requested_contexts(self) -> list[PresentationContext]:
        """The contexts proposed when requesting an association (PS3.8 7.1.1.13).

        A new list on each read, in the order added. Setting it takes a list of
        :class:`PresentationContext` (copied) and raises ValueError past 128.
        """
        return list(self._requested_contexts)

    @requested_contexts.setter
    def requested_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        copies = [_context_copy(cx) for cx in contexts]
        if len(copies) > MAX_REQUESTED_CONTEXTS:
            raise ValueError(
                f"at most {MAX_REQUESTED_CONTEXTS} presentation contexts can be requested, "
                f"not {len(copies)}"
            )
        self._requested_contexts = copies

    def add_requested_context(
        self,
        abstract_syntax: str | bytes,
        transfer_syntax: str | bytes | Iterable[str | bytes] | None = None,
    ) -> None:
        """Add a context to propose when requesting an association (PS3.8 7.1.1.13).

        ``transfer_syntax`` is one UID or a list (default:
        :attr:`default_transfer_syntaxes`). The same abstract syntax
        may be requested more than once. Raises ValueError when 128 contexts are
        already requested (PS3.8 9.3.2.2: odd IDs 1..255) or a UID is malformed.
        """
        if len(self._requested_contexts) >= MAX_REQUESTED_CONTEXTS:
            raise ValueError(
                f"at most {MAX_REQUESTED_CONTEXTS} presentation contexts can be requested"
            )
        self._requested_contexts.append(
            build_context(abstract_syntax, self._default_transfer_syntaxes if transfer_syntax is None
                          else transfer_syntax)
        )

    def remove_requested_context(
        self,
        abstract_syntax: str | bytes,
        transfer_syntax: str | bytes | Iterable[str | bytes] | None = None,
    ) -> None:
        """Stop requesting ``abstract_syntax``, or only some of its transfer syntaxes.

        Without ``transfer_syntax`` every requested context with that abstract syntax
        is removed. With it, each such context loses those transfer syntaxes and is
        removed entirely if none remain. Unknown abstract syntaxes are ignored.
        """
        uid = validate_uid(abstract_syntax, "abstract syntax")
        drop = None if transfer_syntax is None else set(_uid_args(transfer_syntax))
        kept: list[PresentationContext] = []
        for cx in self._requested_contexts:
            if cx.abstract_syntax != uid:
                kept.append(cx)
                continue
            if drop is None:
                continue
            remaining = [ts for ts in cx.transfer_syntax if ts not in drop]
            if remaining:
                cx.transfer_syntax = remaining
                kept.append(cx)
        self._requested_contexts = kept

    # -- supported contexts (association acceptor) ----------------------------

    @property
    def supported_contexts(self) -> list[PresentationContext]:
        """The contexts accepted from association requestors, ordered by abstract syntax.

        Each context's transfer syntaxes are kept in UID order: when accepting, the
        requestor's order of preference decides (see
        :func:`engine.presentation.negotiate_as_acceptor`), so the supported order
        carries no meaning and a canonical one makes printouts stable (it is also the
        order the reference documentation shows after extending a context).
        A new list on each read. Setting it takes a list of
        :class:`PresentationContext` (copied; repeated abstract syntaxes merge as in
        :meth:`add_supported_context`, using each context's ``scu_role``/``scp_role``).
        There is no limit on how many may be supported.
        """
        return [self._supported_contexts[key] for key in sorted(self._supported_contexts)]

    @supported_contexts.setter
    def supported_contexts(self, contexts: Iterable[PresentationContext]) -> None:
        table: dict[str, PresentationContext] = {}
        for cx in contexts:
            copy = _context_copy(cx)
            key = str(copy.abstract_syntax)
            if key in table:
                _merge(table[key], copy.transfer_syntax, copy.scu_role, copy.scp_role)
            else:
                table[key] = copy
        for cx in table.values():
            _canonical_order(cx)
        self._supported_contexts = table

    def add_supported_context(
        self,
        abstract_syntax: str | bytes,
        transfer_syntax: str | bytes | Iterable[str | bytes] | None = None,
        scu_role: bool | None = None,
        scp_role: bool | None = None,
    ) -> None:
        """Support ``abstract_syntax`` when accepting associations (PS3.8 9.3.3.2).

        ``transfer_syntax`` is one UID or a list (default:
        :attr:`default_transfer_syntaxes`). If the abstract syntax is
        already supported its transfer syntaxes are extended (without duplicates) and
        its roles replaced by these arguments, as the reference implementation does.
        Transfer syntaxes are kept in UID order (see :attr:`supported_contexts`).

        ``scu_role``/``scp_role`` answer a requestor's SCP/SCU Role Selection item
        (PS3.7 D.3.3.4): True accepts the proposed role, False rejects it, and None
        (for either one) ignores the proposal so that the default roles apply.
        """
        role_scu = _role_arg(scu_role, "scu_role")
        role_scp = _role_arg(scp_role, "scp_role")
        cx = build_context(abstract_syntax, self._default_transfer_syntaxes if transfer_syntax is None
                          else transfer_syntax)
        key = str(cx.abstract_syntax)
        existing = self._supported_contexts.get(key)
        if existing is not None:
            _merge(existing, cx.transfer_syntax, role_scu, role_scp)
            _canonical_order(existing)
            return
        cx.scu_role = role_scu
        cx.scp_role = role_scp
        _canonical_order(cx)
        self._supported_contexts[key] = cx

    def remove_supported_context(
        self,
        abstract_syntax: str | bytes,
        transfer_syntax: str | bytes | Iterable[str | bytes] | None = None,
    ) -> None:
        """Stop supporting ``abstract_syntax``, or only some of its transfer syntaxes.

        Without ``transfer_syntax`` the supported context is removed. With it, those
        transfer syntaxes are removed and the context too if none remain. An
        abstract syntax that is not supported is ignored.
        """
        uid = validate_uid(abstract_syntax, "abstract syntax")
        key = str(uid)
        cx = self._supported_contexts.get(key)
        if cx is None:
            return
        if transfer_syntax is None:
            del self._supported_contexts[key]
            return
        drop = set(_uid_args(transfer_syntax))
        remaining = [ts for ts in cx.transfer_syntax if ts not in drop]
        if remaining:
            cx.transfer_syntax = remaining
        else:
            del self._supported_contexts[key]


def _role_arg(value: object, what: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"`{what}` must be None or bool, not {type(value).__name__}")
    return value


def _merge(
    cx: PresentationContext,
    transfer_syntax: list[UID],
    scu_role: bool | None,
    scp_role: bool | None,
) -> None:
    """Extend ``cx`` with more transfer syntaxes; the latest roles replace the old."""
    for ts in transfer_syntax:
        cx.add_transfer_syntax(ts)
    cx.scu_role = scu_role
    cx.scp_role = scp_role


def _canonical_order(cx: PresentationContext) -> None:
    """Put a supported context's transfer syntaxes in UID (string) order."""
    cx.transfer_syntax = sorted(cx.transfer_syntax, key=str)
