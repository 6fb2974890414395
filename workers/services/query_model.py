"""The Query/Retrieve information models (PS3.4 C.6): identifiers in, catalog queries out.

Theory of operation: the C-FIND, C-GET and C-MOVE providers share this module. It owns
the models' SOP classes and levels, the table of keys this node supports (:data:`KEYS`:
tag, VR, level, the record field it matches or the aggregate it returns), and the two
translations:

* :func:`find_plan` / :func:`retrieve_plan` read a request's Identifier (decoded with
  pydicom, values kept as the bytes the peer sent) and check it against the model
  (Query/Retrieve Level, the unique keys of the levels above, PS3.4 C.4.1.2.2.1 and
  C.4.2.2.1); every key with a value becomes a :class:`storage.Match`, per PS3.4
  C.2.2.2: an empty value or ``*`` is universal matching; a UI value with backslashes
  is UID list matching; a DA or TM value with a ``-`` is range matching; a value with
  ``*`` or ``?`` is wildcard matching; anything else is single value matching, and a
  multi-valued key matches any of its values. PN keys match without regard to the case
  of A-Z (C.2.2.2.1 leaves it to the SCP; trailing ``^`` are not significant). A
  violation raises :class:`IdentifierError` carrying the status to answer.
* :meth:`FindPlan.identifier` builds one C-FIND response Identifier from a catalog row:
  every key of the request, filled at its level, empty where this node has nothing.

Character sets: the catalog keeps each text value as the bytes the instance carried,
read as Latin-1, with the instance's Specific Character Set beside them. A query value
is decoded with the request's Specific Character Set and looked up in every form it can
have been stored in (as sent, as UTF-8, as Latin-1), so a name matches whichever of
these the instance used. A response carries the stored bytes unchanged, under the
Specific Character Set stored with them (for an entity above IMAGE, its instances';
they normally agree). A row without one (an instance that had none, or indexed before
the catalog kept it) is labelled by its bytes: when any is not ASCII, ISO_IR 192 if all
such values are valid UTF-8, else ISO_IR 100.

Nothing here does I/O; the providers run the queries.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydicom import charset as _charset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from engine import status
from engine.dataset import decode_dataset
from storage import AGGREGATES, LEVELS, CatalogQuery, Match

__all__ = [
    "PATIENT_ROOT_FIND",
    "PATIENT_ROOT_MOVE",
    "PATIENT_ROOT_GET",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_MOVE",
    "STUDY_ROOT_GET",
    "FIND_SOP_CLASSES",
    "GET_SOP_CLASSES",
    "MOVE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "Model",
    "MODELS",
    "Key",
    "KEYS",
    "IdentifierError",
    "FindPlan",
    "RetrievePlan",
    "find_plan",
    "retrieve_plan",
    "failed_instances",
]

# PS3.4 C.6.1 and C.6.2: the Patient Root and Study Root models' SOP classes.
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
GET_SOP_CLASSES = (PATIENT_ROOT_GET, STUDY_ROOT_GET)
MOVE_SOP_CLASSES = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)

#: The transfer syntaxes of Query/Retrieve contexts: the three native ones, whose
#: identifiers pydicom decodes and encodes (a deflated identifier would have to be
#: inflated without a bound on its size; no SCU needs it for a few hundred bytes).
TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")

_RETRIEVE_LEVEL = 0x00080052
_CHARACTER_SET = 0x00080005
_RETRIEVE_AE = 0x00080054
_AVAILABILITY = 0x00080056
_FAILED_LIST = 0x00080058

# An identifier is a few hundred bytes; a UID list for a retrieve of thousands of
# instances is a few hundred KiB. Anything past this is refused, not buffered.
MAX_IDENTIFIER = 4 << 20


class Model(NamedTuple):
    """One information model: its name and levels, top down."""

    name: str
    levels: tuple[str, ...]

    def level_of(self, key: Key) -> str:
        """The level ``key`` belongs to in this model: the Study Root model has no
        PATIENT level; its patient attributes are study attributes (PS3.4 C.6.2.1)."""
        if key.level == "PATIENT" and "PATIENT" not in self.levels:
            return "STUDY"
        return key.level


_PATIENT_ROOT = Model("Patient Root", LEVELS)
_STUDY_ROOT = Model("Study Root", LEVELS[1:])

#: Each Q/R SOP class's model.
MODELS: Mapping[str, Model] = {
    PATIENT_ROOT_FIND: _PATIENT_ROOT, PATIENT_ROOT_MOVE: _PATIENT_ROOT, PATIENT_ROOT_GET: _PATIENT_ROOT,
    STUDY_ROOT_FIND: _STUDY_ROOT, STUDY_ROOT_MOVE: _STUDY_ROOT, STUDY_ROOT_GET: _STUDY_ROOT,
}


class Key(NamedTuple):
    """A key this node supports: where it sits and what answers it (a record ``field``
    or an ``aggregate``; ``match_field`` when matching uses another field)."""

    keyword: str
    vr: str
    level: str
    field: str | None = None
    aggregate: str | None = None
    unique: bool = False
    match_field: str | None = None


#: The keys of PS3.4 C.6.1.1.2 to C.6.1.1.5 and C.6.2.1 that the catalog answers.
KEYS: Mapping[int, Key] = {
    0x00100010: Key("PatientName", "PN", "PATIENT", "patient_name"),
    0x00100020: Key("PatientID", "LO", "PATIENT", "patient_id", unique=True),
    0x00100030: Key("PatientBirthDate", "DA", "PATIENT", "patient_birth_date"),
    0x00100040: Key("PatientSex", "CS", "PATIENT", "patient_sex"),
    0x00201200: Key("NumberOfPatientRelatedStudies", "IS", "PATIENT", aggregate="related_studies"),
    0x00201202: Key("NumberOfPatientRelatedSeries", "IS", "PATIENT", aggregate="related_series"),
    0x00201204: Key("NumberOfPatientRelatedInstances", "IS", "PATIENT", aggregate="related_instances"),
    0x00080020: Key("StudyDate", "DA", "STUDY", "study_date"),
    0x00080030: Key("StudyTime", "TM", "STUDY", "study_time"),
    0x00080050: Key("AccessionNumber", "SH", "STUDY", "accession_number"),
    0x00080090: Key("ReferringPhysicianName", "PN", "STUDY", "referring_physician_name"),
    0x00081030: Key("StudyDescription", "LO", "STUDY", "study_description"),
    0x0020000D: Key("StudyInstanceUID", "UI", "STUDY", "study_instance_uid", unique=True),
    0x00200010: Key("StudyID", "SH", "STUDY", "study_id"),
    0x00080061: Key("ModalitiesInStudy", "CS", "STUDY", aggregate="modalities", match_field="modality"),
    0x00080062: Key("SOPClassesInStudy", "UI", "STUDY", aggregate="sop_classes", match_field="sop_class_uid"),
    0x00201206: Key("NumberOfStudyRelatedSeries", "IS", "STUDY", aggregate="related_series"),
    0x00201208: Key("NumberOfStudyRelatedInstances", "IS", "STUDY", aggregate="related_instances"),
    0x00080060: Key("Modality", "CS", "SERIES", "modality"),
    0x0020000E: Key("SeriesInstanceUID", "UI", "SERIES", "series_instance_uid", unique=True),
    0x00200011: Key("SeriesNumber", "IS", "SERIES", "series_number"),
    0x0008103E: Key("SeriesDescription", "LO", "SERIES", "series_description"),
    0x00180015: Key("BodyPartExamined", "CS", "SERIES", "body_part_examined"),
    0x00201209: Key("NumberOfSeriesRelatedInstances", "IS", "SERIES", aggregate="related_instances"),
    0x00080018: Key("SOPInstanceUID", "UI", "IMAGE", "sop_instance_uid", unique=True),
    0x00080016: Key("SOPClassUID", "UI", "IMAGE", "sop_class_uid"),
    0x00200013: Key("InstanceNumber", "IS", "IMAGE", "instance_number"),
    0x00083002: Key("AvailableTransferSyntaxUID", "UI", "IMAGE", "transfer_syntax_uid"),
}

#: The unique key of each level (PS3.4 C.6.1.1.1: PATIENT's is Patient ID).
_UNIQUE = {key.level: tag for tag, key in KEYS.items() if key.unique}

# PS3.5 6.2: the delimiters that may not be split by a character set's decoding.
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}
_TEXT_DELIMITERS = {0x5C}
_TEXT_VRS = frozenset(("PN", "LO", "SH", "LT", "ST", "UT", "UC"))
_WILDCARDS = ("*", "?")


class IdentifierError(Exception):
    """The identifier cannot be served: ``status`` and ``comment`` answer it;
    ``offending`` names the element (Offending Element, PS3.7 C.4) when one is at fault."""

    def __init__(self, code: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = code
        self.comment = comment
        self.offending = offending

    def reply_fields(self) -> dict[str, Any]:
        return {"offending_element": (self.offending,)} if self.offending is not None else {}


def _mismatch(comment: str, offending: int | None = None) -> IdentifierError:
    return IdentifierError(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment, offending)


# ------------------------------------------------------------------ reading an identifier


class _Element(NamedTuple):
    tag: int
    vr: str
    value: bytes | None  # None: a sequence


def _decode(raw: bytes, transfer_syntax: str) -> list[_Element]:
    if len(raw) > MAX_IDENTIFIER:
        raise IdentifierError(status.REFUSED_OUT_OF_RESOURCES,
                              f"identifier of {len(raw)} bytes is over {MAX_IDENTIFIER >> 20} MiB")
    if not raw:
        raise _mismatch("the request has no identifier")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = decode_dataset(raw, transfer_syntax)
            elements = []
            for tag in ds.keys():
                elem = ds.get_item(tag)
                elements.append(_element(int(tag), elem))
    except IdentifierError:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed bytes
        raise IdentifierError(status.UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}"[:64]) from None
    return elements


def _element(tag: int, elem: Any) -> _Element:
    vr = elem.VR
    if not vr or len(vr) != 2:
        known = KEYS.get(tag)
        if known is not None:
            vr = known.vr
        else:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
            if len(vr) != 2:
                vr = "UN"
    if isinstance(elem, RawDataElement):
        if vr == "SQ":
            return _Element(tag, vr, None)
        value = bytes(elem.value or b"")
        if elem.length != 0xFFFFFFFF and len(value) < elem.length:
            # pydicom keeps what there was of a value that runs past the end.
            raise IdentifierError(status.UNABLE_TO_PROCESS,
                                  f"identifier ends inside element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        return _Element(tag, vr, value)
    value = elem.value
    if vr == "SQ" or isinstance(value, Sequence):
        return _Element(tag, "SQ", None)
    if value is None or value == "":
        return _Element(tag, vr, b"")
    if isinstance(value, bytes):
        return _Element(tag, vr, value)
    return _Element(tag, vr, str(value).encode("latin-1", "replace"))


def _encodings(elements: Iterable[_Element]) -> list[str]:
    for elem in elements:
        if elem.tag == _CHARACTER_SET and elem.value:
            terms = [t.strip() for t in elem.value.decode("latin-1").split("\\")]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    return _charset.convert_encodings(terms)
                except Exception:
                    return ["iso8859"]
    return ["iso8859"]  # the default repertoire: ASCII bytes read as themselves


def _text(value: bytes) -> str:
    return value.decode("latin-1").strip(" \x00")


def _values(elem: _Element, encodings: list[str]) -> list[tuple[str, list[str]]]:
    """Each value of a key: its text and the forms it may be stored in (module doc)."""
    raw = elem.value or b""
    if elem.vr in _TEXT_VRS:
        delimiters = _PN_DELIMITERS if elem.vr == "PN" else _TEXT_DELIMITERS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                text = _charset.decode_bytes(raw, encodings, delimiters)
            except Exception:
                text = raw.decode("latin-1")
        texts = [t.strip(" \x00") for t in text.split("\\")]
        raws = [_text(r) for r in raw.split(b"\\")]
        out = []
        for i, value in enumerate(texts):
            if elem.vr == "PN":
                value = "=".join(group.rstrip("^ ") for group in value.split("="))
            forms = [value]
            utf8 = value.encode("utf-8").decode("latin-1")
            if utf8 != value:
                forms.append(utf8)
            if len(raws) == len(texts) and raws[i] not in forms and raws[i]:
                forms.append(raws[i])
            out.append((value, forms))
        return out
    return [(v, [v]) for v in (_text(r) for r in raw.split(b"\\"))]


def _match(key: Key, field: str, elem: _Element, encodings: list[str]) -> Match | None:
    """The condition a key's value sets, or None for universal matching."""
    values = [(text, forms) for text, forms in _values(elem, encodings) if text]
    if not values or any(text == "*" for text, _ in values):
        return None  # PS3.4 C.2.2.2.3: empty (or "*") matches everything
    fold = key.vr == "PN"
    if key.vr in ("DA", "TM") and len(values) == 1 and "-" in values[0][0]:
        low, _, high = values[0][0].partition("-")
        low, high = low.strip(), high.strip()
        if "-" in high or not (low or high):
            raise _mismatch(f"{key.keyword} range {values[0][0]!r} is not valid", elem.tag)
        return Match(field, "range", (low, high))
    forms = [form for _, fs in values for form in fs]
    if key.vr != "UI" and any(w in form for form in forms for w in _WILDCARDS):
        return Match(field, "pattern", tuple(dict.fromkeys(forms)), fold_case=fold)
    return Match(field, "equal", tuple(dict.fromkeys(forms)), fold_case=fold)


def _level(elements: list[_Element], model: Model) -> str:
    for elem in elements:
        if elem.tag == _RETRIEVE_LEVEL:
            level = _text(elem.value or b"").upper()
            if level not in model.levels:
                raise _mismatch(f"Query/Retrieve Level {level[:16]!r} is not one of the "
                                f"{model.name} model", _RETRIEVE_LEVEL)
            return level
    raise _mismatch("Query/Retrieve Level (0008,0052) missing", _RETRIEVE_LEVEL)


def _unique_match(model: Model, level: str, elem: _Element | None, *, many: bool) -> Match:
    """The condition of a unique key: a value (or, ``many``, a list) without wildcards."""
    tag = _UNIQUE[level]
    key = KEYS[tag]
    if elem is None or not elem.value or not _text(elem.value):
        raise _mismatch(f"{key.keyword} needs a value at {level} level of the {model.name} model", tag)
    values = [_text(v) for v in elem.value.split(b"\\")]
    if not all(values) or any(w in v for v in values for w in _WILDCARDS) or (len(values) > 1 and not many):
        raise _mismatch(f"{key.keyword} must be a single value{' or a list' if many else ''} "
                        f"at {level} level", tag)
    assert key.field is not None
    return Match(key.field, "equal", tuple(dict.fromkeys(values)))


# ------------------------------------------------------------------ C-FIND


class _Return(NamedTuple):
    """One key of the request, as the response fills it."""

    element: _Element
    key: Key | None  # None: not supported, returned empty


class FindPlan(NamedTuple):
    """A C-FIND identifier read: what to ask the catalog and how to answer each row.

    ``warning``: an optional key the node does not support had a value (its pending
    responses are then FF01, PS3.4 Table C.4-1)."""

    level: str
    query: CatalogQuery
    returns: tuple[_Return, ...]
    warning: bool

    @property
    def pending_status(self) -> int:
        return status.PENDING_WARNING if self.warning else status.PENDING

    def identifier(self, row: Mapping[str, Any], transfer_syntax: str, retrieve_ae: str) -> bytes:
        """The response Identifier for catalog ``row`` (PS3.4 C.4.1.1.3.2)."""
        values: dict[int, tuple[str, list[str] | None]] = {}
        texts: list[str] = []
        charset_requested = False
        for ret in self.returns:
            tag, vr = ret.element.tag, ret.element.vr
            key = ret.key
            if tag == _CHARACTER_SET:
                charset_requested = True
                continue
            if tag == _RETRIEVE_LEVEL:
                values[tag] = ("CS", [self.level])
            elif tag == _RETRIEVE_AE:
                values[tag] = ("AE", [retrieve_ae])
            elif tag == _AVAILABILITY:
                values[tag] = ("CS", ["ONLINE"])
            elif key is None:
                values[tag] = (vr, None if vr == "SQ" else [])
            elif key.aggregate is not None and key.aggregate in self.query.aggregates:
                got = row.get(key.aggregate)
                values[tag] = (key.vr, [str(v) for v in got] if isinstance(got, list) else [str(got or 0)])
            elif key.field is not None and key.field in row:
                got = row.get(key.field)
                values[tag] = (key.vr, [got] if got else [])
                if got:
                    texts.append(got)
            else:
                values[tag] = (key.vr, [])
        stored = row.get("specific_character_set")
        if stored and texts:  # the bytes are the instance's: say what they are in
            values[_CHARACTER_SET] = ("CS", stored.split("\\"))
        else:
            character_set = _character_set(texts)
            if character_set is not None or charset_requested:
                name = character_set or self._requested_charset()
                values[_CHARACTER_SET] = ("CS", [name] if name else [])
        return _encode([_raw(tag, vr, items) for tag, (vr, items) in sorted(values.items())], transfer_syntax)

    def _requested_charset(self) -> str | None:
        for ret in self.returns:
            if ret.element.tag == _CHARACTER_SET and ret.element.value:
                return _text(ret.element.value)
        return None


def _character_set(texts: Iterable[str]) -> str | None:
    """The Specific Character Set of the stored bytes in ``texts`` (module doc)."""
    wide = [t for t in texts if not t.isascii()]
    if not wide:
        return None
    try:
        for text in wide:
            text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return "ISO_IR 100"
    return "ISO_IR 192"


def _encode(elements: list[RawDataElement], transfer_syntax: str) -> bytes:
    """A data set of raw (already encoded) elements in ascending tag order, written by
    pydicom's element writer: a Dataset would first convert each element and back,
    four times the cost per response."""
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"identifiers are not written in {transfer_syntax}")
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == "1.2.840.10008.1.2"
    fp.is_little_endian = transfer_syntax != "1.2.840.10008.1.2.2"
    for elem in elements:
        write_data_element(fp, elem)
    return fp.getvalue()


def _raw(tag: int, vr: str, items: list[str] | None) -> RawDataElement:
    """An element of the response, its value the stored bytes (padded to even length)."""
    if items is None:  # an unsupported sequence key: returned empty
        value = b""
    else:
        value = "\\".join(items).encode("latin-1", "replace")
        if len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
    return RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def find_plan(raw: bytes, transfer_syntax: str, model: Model) -> FindPlan:
    """Read a C-FIND Identifier (PS3.4 C.4.1.1.3.1, hierarchical search C.4.1.2.2.1)."""
    elements = _decode(raw, transfer_syntax)
    level = _level(elements, model)
    encodings = _encodings(elements)
    depth = model.levels.index(level)
    by_tag = {elem.tag: elem for elem in elements}
    matches: list[Match] = []
    for above in model.levels[:depth]:
        matches.append(_unique_match(model, above, by_tag.get(_UNIQUE[above]), many=True))
    aggregates: set[str] = set()
    returns = []
    warning = False
    for elem in elements:
        tag = elem.tag
        if tag in (_CHARACTER_SET, _RETRIEVE_LEVEL, _RETRIEVE_AE, _AVAILABILITY):
            returns.append(_Return(elem, None))
            continue
        if (tag & 0xFFFF) == 0 or tag >> 16 in (0x0000, 0x0002):
            continue  # group lengths, command and File Meta elements have no place here
        key = KEYS.get(tag)
        key_level = model.level_of(key) if key is not None else None
        supported = key is not None and elem.value is not None and (
            key_level == level or (key.field is not None and model.levels.index(key_level) < depth))
        if not supported or key is None:
            if elem.value and key is None:
                warning = True
            returns.append(_Return(elem, None))
            continue
        if key.aggregate is not None:
            if key.aggregate in AGGREGATES[level]:
                aggregates.add(key.aggregate)
            field = key.match_field
        else:
            field = key.field
        returns.append(_Return(elem, key))
        if key.unique and model.levels.index(key_level) < depth:
            continue  # matched above, as a unique key of a higher level
        if field is None or not elem.value:
            continue
        match = _match(key, field, elem, encodings)
        if match is not None:
            matches.append(match)
    query = CatalogQuery(level, tuple(matches), frozenset(aggregates))
    return FindPlan(level, query, tuple(returns), warning)


# ------------------------------------------------------------------ C-GET, C-MOVE


class RetrievePlan(NamedTuple):
    """A C-GET/C-MOVE identifier read: the instances it names, as an IMAGE-level query."""

    level: str
    query: CatalogQuery


def retrieve_plan(raw: bytes, transfer_syntax: str, model: Model) -> RetrievePlan:
    """Read a C-GET/C-MOVE Identifier (PS3.4 C.4.2.2.1, C.4.3.2.1): the unique keys of
    the levels above the Query/Retrieve Level (single values) and of that level (a
    single value or a list). Other keys are not used."""
    elements = _decode(raw, transfer_syntax)
    level = _level(elements, model)
    by_tag = {elem.tag: elem for elem in elements}
    depth = model.levels.index(level)
    matches = tuple(
        _unique_match(model, above, by_tag.get(_UNIQUE[above]), many=above == level)
        for above in model.levels[: depth + 1]
    )
    return RetrievePlan(level, CatalogQuery("IMAGE", matches))


#: A Failed SOP Instance UID List's value is an explicit-VR UI, whose length field has
#: 16 bits: the list is cut at the last UID that fits (PS3.5 7.1.2).
_MAX_UI_LIST = 0xFFFE


def failed_instances(uids: Iterable[str], transfer_syntax: str) -> bytes:
    """A response data set holding Failed SOP Instance UID List (0008,0058) (PS3.4
    C.4.2.1.4, C.4.3.1.4)."""
    kept: list[str] = []
    size = -1
    for uid in uids:
        size += len(uid) + 1
        if size > _MAX_UI_LIST:
            break
        kept.append(uid)
    return _encode([_raw(_FAILED_LIST, "UI", kept)], transfer_syntax)
