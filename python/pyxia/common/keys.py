"""Oxia's key formats and key orders, as pure functions.

Everything here must match Oxia byte for byte, because the keys end up in the
shard DB, on the wire (List/RangeScan/Get results) and in snapshots:

* the internal keys a shard keeps next to the user's records (``__oxia/...``):
  commit offset, last version id, term, checksum, feature flags, sessions and
  their shadow keys, notification batches, secondary index entries;
* Go's ``url.PathEscape`` / ``url.PathUnescape``, used to embed a user key
  inside an internal key;
* the two key encodings a namespace can choose (``keySorting``):
  *hierarchical* (the default) and *natural*, which decide the order of the
  keys in the DB, and hence of List/RangeScan results and of Get with
  FLOOR/CEILING/LOWER/HIGHER;
* the bounds of a List/RangeScan/DeleteRange over the encoded keys;
* sequential keys (``PutRequest.sequence_key_delta``).

Sources checked (oxia-db/oxia): ``common/compare/encode.go``,
``common/compare/compare_with_slash.go``, ``common/constant/keys.go``,
``oxiad/dataserver/database/{db.go,db_sequences.go,secondary_index.go,
notifications_tracker.go}``, ``oxiad/dataserver/database/kvstore/kv_pebble.go``,
``oxiad/dataserver/controller/lead/{session_manager.go,secondary_indexes.go}``,
``oxia/key_order.go``; and Go 1.26 ``net/url`` for the escaping.

Why '/' can become 0xFF: a key is a protobuf ``string``, i.e. valid UTF-8, and
valid UTF-8 never contains the bytes 0xC0, 0xC1 or 0xF5..0xFF. So the
hierarchical encoding can turn every '/' into 0xFF and both decode it back
unambiguously and make a separator sort after every other byte of a key. For
the same reason the natural encoding's internal region (``\\xff\\xffoxia/``)
sorts after every user key stored by pyxia.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import quote, unquote_to_bytes

from pyxia._native import encode_hierarchical as _native_encode_hierarchical
from pyxia.errors import InvalidArgument

__all__ = [
    "CHECKSUM_KEY",
    "COMMIT_OFFSET_KEY",
    "FEATURES_PREFIX",
    "FIRST_NOTIFICATION_KEY",
    "HIERARCHICAL",
    "INDEX_PREFIX",
    "INDEX_SEPARATOR",
    "INTERNAL_KEY_PREFIX",
    "LAST_NOTIFICATION_KEY",
    "LAST_VERSION_ID_KEY",
    "MAX_SEQUENCE_VALUE",
    "NATURAL",
    "NOTIFICATIONS_PREFIX",
    "SESSIONS_LIST_END",
    "SESSIONS_LIST_START",
    "SESSION_PREFIX",
    "TERM_KEY",
    "TERM_OPTIONS_KEY",
    "HierarchicalEncoding",
    "IndexEntry",
    "InvalidPathEscape",
    "InvalidSequenceKey",
    "KeyEncoding",
    "KeyFormatError",
    "MissingPartitionKey",
    "MissingSequenceDeltas",
    "NaturalEncoding",
    "ScanBounds",
    "SequenceDeltaIsZero",
    "SequenceKeyError",
    "SequenceOverflow",
    "SequenceWithExpectedVersion",
    "compare_with_slash",
    "decode_hierarchical",
    "decode_natural",
    "delete_range_bounds",
    "encode_hierarchical",
    "encode_natural",
    "encoding_by_name",
    "encoding_for_key_sorting",
    "feature_flag_key",
    "index_entry_key",
    "index_scan_range",
    "index_search_key",
    "is_internal_key",
    "is_session_key",
    "next_sequence_key",
    "next_sequence_values",
    "notification_key",
    "parse_feature_flag_key",
    "parse_index_entry_key",
    "parse_notification_key",
    "parse_sequence_suffix",
    "parse_session_key",
    "parse_session_shadow_key",
    "path_escape",
    "path_unescape",
    "scan_bounds",
    "sequence_key",
    "sequence_search_key",
    "sequence_updates_range",
    "session_key",
    "session_shadow_key",
    "session_shadow_range",
    "validate_sequence_put",
]

_MAX_INT64: Final = (1 << 63) - 1


class KeyFormatError(ValueError):
    """A stored key does not have the format its prefix promises."""


# ---------------------------------------------------------------------------------------------
# Internal keys
# ---------------------------------------------------------------------------------------------

INTERNAL_KEY_PREFIX: Final = "__oxia/"
"""Keys under this prefix belong to the shard, not to the user: hidden from List/RangeScan and
Get unless ``include_internal_keys``, never notified."""

COMMIT_OFFSET_KEY: Final = INTERNAL_KEY_PREFIX + "commit-offset"
"""WAL offset of the last entry applied to the DB (ASCII decimal, written in every batch)."""
LAST_VERSION_ID_KEY: Final = INTERNAL_KEY_PREFIX + "last-version-id"
"""The shard-wide version id counter (ASCII decimal)."""
CHECKSUM_KEY: Final = INTERNAL_KEY_PREFIX + "checksum"
"""Running CRC of the DB batches (ASCII decimal), once FEATURE_DB_CHECKSUM is on."""
TERM_KEY: Final = INTERNAL_KEY_PREFIX + "term"
"""The shard's term (ASCII decimal)."""
TERM_OPTIONS_KEY: Final = TERM_KEY + "-options"
"""The term options (JSON)."""
FEATURES_PREFIX: Final = INTERNAL_KEY_PREFIX + "features"
"""Enabled feature flags live at ``__oxia/features/<%010d feature>``."""
SESSION_PREFIX: Final = INTERNAL_KEY_PREFIX + "session"
"""Session records ``__oxia/session/<%016x id>`` and their shadow keys."""
NOTIFICATIONS_PREFIX: Final = INTERNAL_KEY_PREFIX + "notifications"
"""Notification batches ``__oxia/notifications/<%016x offset>``."""
INDEX_PREFIX: Final = INTERNAL_KEY_PREFIX + "idx"
"""Secondary index entries ``__oxia/idx/<name>/<secondary key>\\x01<escaped primary key>``."""
INDEX_SEPARATOR: Final = "\x01"
"""Separates the secondary key from the escaped primary key in an index entry."""

_HEX16 = re.compile(r"[0-9a-fA-F]{16}")


def is_internal_key(key: str) -> bool:
    """Whether ``key`` is one of the shard's own keys (``__oxia/...``)."""
    return key.startswith(INTERNAL_KEY_PREFIX)


def _hex16(what: str, value: int) -> str:
    if not 0 <= value <= _MAX_INT64:
        raise ValueError(f"{what} must be in [0, 2^63): {value}")
    return f"{value:016x}"


def _parse_hex16(what: str, text: str, key: str) -> int:
    if _HEX16.fullmatch(text) is None:
        raise KeyFormatError(f"not a {what} key: {key!r}")
    value = int(text, 16)
    if value > _MAX_INT64:
        raise KeyFormatError(f"{what} out of range in {key!r}")
    return value


def feature_flag_key(feature: int) -> str:
    """``__oxia/features/<%010d feature>``: present when the feature is enabled on the shard."""
    if not 0 <= feature <= 0x7FFFFFFF:
        raise ValueError(f"feature must be a non-negative int32: {feature}")
    return f"{FEATURES_PREFIX}/{feature:010d}"


def parse_feature_flag_key(key: str) -> int:
    """The feature number of a feature flag key; strict, like Oxia's recovery (the key must be
    exactly what :func:`feature_flag_key` writes)."""
    prefix = FEATURES_PREFIX + "/"
    text = key[len(prefix) :] if key.startswith(prefix) else ""
    if not (text.isascii() and text.isdigit()):
        raise KeyFormatError(f"not a feature flag key: {key!r}")
    feature = int(text)
    if feature > 0x7FFFFFFF or feature_flag_key(feature) != key:
        raise KeyFormatError(f"not a feature flag key: {key!r}")
    return feature


# --- sessions ---------------------------------------------------------------------------------

_SESSION_KEY_LENGTH: Final = len(SESSION_PREFIX) + 1 + 16

SESSIONS_LIST_START: Final = SESSION_PREFIX + "/"
"""Start of the List (include internal keys) that finds every session record."""
SESSIONS_LIST_END: Final = SESSION_PREFIX + "/~"
"""End of that List. Not ``__oxia/session//``: with the natural sorting '/' sorts before the hex
digits. With the natural sorting the range also holds the shadow keys: filter the result with
:func:`is_session_key`."""


def session_key(session_id: int) -> str:
    """``__oxia/session/<%016x id>``, the record of a session (value: ``SessionMetadata``).

    A session id is the WAL offset of the write that created the session."""
    return f"{SESSION_PREFIX}/{_hex16('session id', session_id)}"


def is_session_key(key: str) -> bool:
    """Whether ``key`` is a session record (and not one of its shadow keys)."""
    return (
        len(key) == _SESSION_KEY_LENGTH
        and key.startswith(SESSIONS_LIST_START)
        and _HEX16.fullmatch(key, len(SESSIONS_LIST_START)) is not None
    )


def parse_session_key(key: str) -> int:
    """The session id of a session record key."""
    if len(key) != _SESSION_KEY_LENGTH or not key.startswith(SESSIONS_LIST_START):
        raise KeyFormatError(f"not a session key: {key!r}")
    return _parse_hex16("session", key[len(SESSIONS_LIST_START) :], key)


def session_shadow_key(session_id: int, key: str) -> str:
    """``__oxia/session/<%016x id>/<url.PathEscape(key)>``: marks ``key`` as an ephemeral record
    of the session, so that deleting the session record deletes it too. Empty value."""
    return f"{session_key(session_id)}/{path_escape(key)}"


def parse_session_shadow_key(shadow_key: str) -> tuple[int, str]:
    """``(session id, user key)`` of a shadow key."""
    if len(shadow_key) <= _SESSION_KEY_LENGTH or shadow_key[_SESSION_KEY_LENGTH] != "/":
        raise KeyFormatError(f"not a session shadow key: {shadow_key!r}")
    session_id = parse_session_key(shadow_key[:_SESSION_KEY_LENGTH])
    try:
        key = path_unescape(shadow_key[_SESSION_KEY_LENGTH + 1 :])
    except InvalidPathEscape as e:
        raise KeyFormatError(f"not a session shadow key: {shadow_key!r}: {e}") from e
    return session_id, key


def session_shadow_range(session_id: int, encoding: KeyEncoding) -> tuple[bytes, bytes]:
    """Encoded ``[start, end)`` holding exactly the shadow keys of a session, for both encodings.

    An escaped key is printable ASCII and never contains '/', so every shadow key sits between
    ``<session key>/`` and ``<session key>/`` + 0xFF. With the hierarchical encoding that end is
    byte-identical to the encoding of ``<session key>//`` (what Oxia always used); with the natural
    encoding it is what Oxia uses once FEATURE_EPHEMERAL_CLEANUP_NATURAL_SORTING is on (before,
    Oxia's natural-sorted range missed most shadow keys; pyxia never reproduces that)."""
    start = encoding.encode(session_key(session_id) + "/")
    return start, start + b"\xff"


# --- notifications ----------------------------------------------------------------------------


def notification_key(offset: int) -> str:
    """``__oxia/notifications/<%016x offset>``: the NotificationBatch of the entry at ``offset``."""
    return f"{NOTIFICATIONS_PREFIX}/{_hex16('notification offset', offset)}"


def parse_notification_key(key: str) -> int:
    """The WAL offset of a notification batch key."""
    prefix = NOTIFICATIONS_PREFIX + "/"
    if not key.startswith(prefix):
        raise KeyFormatError(f"not a notification key: {key!r}")
    return _parse_hex16("notification", key[len(prefix) :], key)


FIRST_NOTIFICATION_KEY: Final = notification_key(0)
LAST_NOTIFICATION_KEY: Final = notification_key(_MAX_INT64)
"""Notification scans run ``[notification_key(start), LAST_NOTIFICATION_KEY)``, like Oxia."""


# --- secondary indexes ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A parsed secondary index entry key."""

    index_name: str
    secondary_key: str
    primary_key: str


def index_entry_key(index_name: str, secondary_key: str, primary_key: str) -> str:
    """``__oxia/idx/<index name>/<secondary key>\\x01<url.PathEscape(primary key)>`` (empty value).

    The index name and secondary key are stored as the client gave them; only the primary key is
    escaped, and escaping never emits \\x01, so the last \\x01 is the field boundary."""
    search_key = index_search_key(index_name, secondary_key)
    return f"{search_key}{INDEX_SEPARATOR}{path_escape(primary_key)}"


def index_search_key(index_name: str, secondary_key: str) -> str:
    """``__oxia/idx/<index name>/<secondary key>``: where a secondary-index Get or List positions
    itself (entries for that secondary key follow it directly)."""
    return f"{INDEX_PREFIX}/{index_name}/{secondary_key}"


def parse_index_entry_key(key: str) -> IndexEntry:
    """Inverse of :func:`index_entry_key`. Like Oxia's parser, the index name ends at the first
    '/' after the prefix and the primary key starts after the last \\x01."""
    prefix = INDEX_PREFIX + "/"
    if not key.startswith(prefix):
        raise KeyFormatError(f"not a secondary index key: {key!r}")
    name, slash, rest = key[len(prefix) :].partition("/")
    secondary_key, sep, escaped_primary = rest.rpartition(INDEX_SEPARATOR)
    if not slash or not sep:
        raise KeyFormatError(f"not a secondary index key: {key!r}")
    try:
        primary_key = path_unescape(escaped_primary)
    except InvalidPathEscape as e:
        raise KeyFormatError(f"not a secondary index key: {key!r}: {e}") from e
    return IndexEntry(name, secondary_key, primary_key)


def index_scan_range(index_name: str, start_inclusive: str, end_exclusive: str) -> tuple[str, str]:
    """The (internal-key) List range a List/RangeScan over a secondary index turns into.

    Oxia formats both ends blindly, so an empty ``end_exclusive`` gives the end
    ``__oxia/idx/<name>/``, which sorts before any entry: such a List returns nothing. pyxia
    keeps that behaviour (clients always send an end)."""
    return (
        index_search_key(index_name, start_inclusive),
        index_search_key(index_name, end_exclusive),
    )


# ---------------------------------------------------------------------------------------------
# Go's url.PathEscape / url.PathUnescape
# ---------------------------------------------------------------------------------------------

_PATH_SEGMENT_SAFE: Final = "$&+:=@"
"""Besides ASCII letters, digits and ``-._~`` (always safe for ``quote``), the bytes Go's
``shouldEscape(c, encodePathSegment)`` leaves alone. Go escapes '/', ';', ',' and '?' in a path
segment, and also ``!'()*`` and everything else not listed (checked against Go 1.26)."""

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class InvalidPathEscape(ValueError):
    """A '%' not followed by two hex digits, as Go's ``url.EscapeError``."""


def path_escape(s: str) -> str:
    """Go's ``url.PathEscape``: UTF-8 bytes outside ``A-Za-z0-9-._~$&+:=@`` become ``%XX``
    (upper-case hex)."""
    return quote(s, safe=_PATH_SEGMENT_SAFE)


def path_unescape(s: str) -> str:
    """Go's ``url.PathUnescape``: every ``%XX`` becomes byte XX ('+' stays '+'); a '%' without two
    hex digits after it is an error. The bytes must form UTF-8 (a key is a protobuf string)."""
    bad = _BAD_ESCAPE.search(s)
    if bad is not None:
        raise InvalidPathEscape(f"invalid URL escape {s[bad.start() : bad.start() + 3]!r}")
    if "%" not in s:
        return s
    try:
        return unquote_to_bytes(s).decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidPathEscape(f"escaped bytes are not UTF-8: {s!r}") from e


# ---------------------------------------------------------------------------------------------
# Key encodings (the order of a shard's keys)
# ---------------------------------------------------------------------------------------------

_SEPARATOR: Final = 0x2F  # '/'
_ENCODED_SEPARATOR: Final = 0xFF
_INTERNAL_KEYS_MARKER: Final = 0x8000
_MAX_SEPARATOR_COUNT: Final = _INTERNAL_KEYS_MARKER - 1
_SLASH_TO_FF: Final = bytes.maketrans(b"/", b"\xff")
_FF_TO_SLASH: Final = bytes.maketrans(b"\xff", b"/")
_INTERNAL_PREFIX_BYTES: Final = INTERNAL_KEY_PREFIX.encode()
_NATURAL_INTERNAL_PREFIX: Final = b"\xff\xff" + _INTERNAL_PREFIX_BYTES[2:]


def encode_hierarchical(key: str) -> bytes:
    """Oxia's hierarchical stored-key encoding.

    Two big-endian bytes hold the number of '/' in the key, less one if the key ends with "//"
    (that trailing separator opens no new level), capped at 0x7FFF; bit 15 is set for internal
    keys so they sort after every user key. Then the key's UTF-8 bytes with every '/' replaced by
    0xFF. Bytewise order of the result: first by depth, then by the key where a separator sorts
    after any other character (so ``List("/a/", "/a//")`` yields exactly the children of
    ``/a``)."""
    raw = key.encode("utf-8")
    separators = raw.count(b"/")
    if separators == 0:
        return b"\x00\x00" + raw
    if raw.endswith(b"//"):
        separators -= 1
    separators = min(separators, _MAX_SEPARATOR_COUNT)
    if raw.startswith(_INTERNAL_PREFIX_BYTES):
        separators |= _INTERNAL_KEYS_MARKER
    return separators.to_bytes(2, "big") + raw.translate(_SLASH_TO_FF)


def decode_hierarchical(encoded: bytes) -> str:
    """Inverse of :func:`encode_hierarchical` (like Oxia, anything of 2 bytes or less decodes
    to the empty key)."""
    if len(encoded) <= 2:
        return ""
    body = encoded[2:]
    if encoded[0] != 0 or encoded[1] != 0:
        body = body.translate(_FF_TO_SLASH)
    return body.decode("utf-8")


def encode_natural(key: str) -> bytes:
    """Oxia's natural encoding: the UTF-8 bytes, except that an internal key's leading ``__``
    becomes 0xFF 0xFF, so internal keys sort after every user key (a user DeleteRange("A", "Z")
    cannot reach them)."""
    raw = key.encode("utf-8")
    if raw.startswith(_INTERNAL_PREFIX_BYTES):
        return b"\xff\xff" + raw[2:]
    return raw


def decode_natural(encoded: bytes) -> str:
    """Inverse of :func:`encode_natural`."""
    if encoded.startswith(_NATURAL_INTERNAL_PREFIX):
        return "__" + encoded[2:].decode("utf-8")
    return encoded.decode("utf-8")


class KeyEncoding(Protocol):
    """How a shard turns keys into DB keys; the bytewise order of the result is the shard's key
    order."""

    @property
    def name(self) -> str:
        """``hierarchical`` or ``natural`` (Oxia's ``keySorting`` and DB marker names)."""
        ...

    @property
    def internal_region(self) -> tuple[bytes, bytes | None]:
        """Encoded ``[start, end)`` holding every internal key; ``end`` is None when the region
        runs to the end of the keyspace."""
        ...

    def encode(self, key: str) -> bytes: ...

    def decode(self, encoded: bytes) -> str: ...

    def compare(self, a: str, b: str) -> int:
        """-1, 0 or +1: the order of ``a`` and ``b`` in a shard using this encoding."""
        ...

    def is_internal(self, encoded: bytes) -> bool:
        """Whether an encoded key is an internal key."""
        ...


def _sign(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


class HierarchicalEncoding:
    """Oxia's default key sorting: by depth, then by key with '/' sorting last."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return "hierarchical"

    @property
    def internal_region(self) -> tuple[bytes, bytes | None]:
        return b"\x80", None

    # The native encoder (same result as encode_hierarchical, ~10x faster):
    # every key of every request goes through it.
    encode = staticmethod(_native_encode_hierarchical)

    def decode(self, encoded: bytes) -> str:
        return decode_hierarchical(encoded)

    def compare(self, a: str, b: str) -> int:
        return _sign(_native_encode_hierarchical(a), _native_encode_hierarchical(b))

    def is_internal(self, encoded: bytes) -> bool:
        return bool(encoded) and encoded[0] & 0x80 != 0

    def __repr__(self) -> str:
        return "HierarchicalEncoding()"


class NaturalEncoding:
    """Plain UTF-8 byte order (= code point order), internal keys last."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return "natural"

    @property
    def internal_region(self) -> tuple[bytes, bytes | None]:
        # "\xff\xffoxia/" .. its successor "\xff\xffoxia0". Go must keep the end because a Go
        # string may hold 0xFF bytes; a valid UTF-8 key never sorts at or after the start.
        return _NATURAL_INTERNAL_PREFIX, _NATURAL_INTERNAL_PREFIX[:-1] + b"0"

    def encode(self, key: str) -> bytes:
        return encode_natural(key)

    def decode(self, encoded: bytes) -> str:
        return decode_natural(encoded)

    def compare(self, a: str, b: str) -> int:
        return _sign(encode_natural(a), encode_natural(b))

    def is_internal(self, encoded: bytes) -> bool:
        return encoded.startswith(_NATURAL_INTERNAL_PREFIX)

    def __repr__(self) -> str:
        return "NaturalEncoding()"


HIERARCHICAL: Final = HierarchicalEncoding()
NATURAL: Final = NaturalEncoding()


def encoding_by_name(name: str) -> KeyEncoding:
    """The encoding named in a namespace's ``keySorting`` (empty means hierarchical)."""
    if name in ("", "hierarchical"):
        return HIERARCHICAL
    if name == "natural":
        return NATURAL
    raise ValueError(f"unknown key encoding {name!r}")


def encoding_for_key_sorting(key_sorting: int) -> KeyEncoding:
    """The encoding for a ``KeySortingType`` enum value (replication.proto: UNKNOWN=0,
    NATURAL=1, HIERARCHICAL=2). UNKNOWN means hierarchical, Oxia's default."""
    if key_sorting in (0, 2):
        return HIERARCHICAL
    if key_sorting == 1:
        return NATURAL
    raise ValueError(f"unknown key sorting {key_sorting}")


def compare_with_slash(a: str, b: str) -> int:
    """Oxia's legacy ``CompareWithSlash`` order: segment by segment, a key with no '/' left sorts
    before one that still has one.

    This is NOT the hierarchical encoding's order (e.g. ``"b/x"`` sorts after ``"a/y/z"`` here,
    before it in hierarchical; ``"a/x"`` before ``"ab/y"`` here, after it in hierarchical). Oxia's
    clients still merge multi-shard results with it when the server does not advertise its key
    sorting, and Oxia's secondary-index Get compares secondary keys with it. Python's ``str``
    order is code point order, which is UTF-8 byte order, so comparing ``str`` is exact."""
    while a and b:
        ia = a.find("/")
        ib = b.find("/")
        if ia < 0 and ib < 0:
            return (a > b) - (a < b)
        if ia < 0:
            return -1
        if ib < 0:
            return 1
        sa = a[:ia]
        sb = b[:ib]
        if sa != sb:
            return (sa > sb) - (sa < sb)
        a = a[ia + 1 :]
        b = b[ib + 1 :]
    return (len(a) > len(b)) - (len(a) < len(b))


# ---------------------------------------------------------------------------------------------
# Range bounds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanBounds:
    """Encoded bounds of a scan: keys ``k`` with ``lower <= k < upper`` (None = unbounded) and
    not inside ``skip`` (``[skip_start, skip_end)``, the internal region when it could not be cut
    off with the upper bound). ``empty`` means the scan holds nothing."""

    lower: bytes | None
    upper: bytes | None
    skip: tuple[bytes, bytes] | None = None
    empty: bool = False

    def contains(self, encoded: bytes) -> bool:
        """Whether an encoded key is part of the scan."""
        if self.empty:
            return False
        if self.lower is not None and encoded < self.lower:
            return False
        if self.upper is not None and encoded >= self.upper:
            return False
        return not (self.skip is not None and self.skip[0] <= encoded < self.skip[1])


_EMPTY_SCAN: Final = ScanBounds(None, None, None, True)


def _exclude_internal(
    lower: bytes | None, upper: bytes | None, encoding: KeyEncoding
) -> ScanBounds:
    start, end = encoding.internal_region
    if end is None:
        # The internal region runs to the end of the keyspace: bound it away.
        if upper is None or start < upper:
            upper = start
        if lower is not None and lower >= upper:
            return _EMPTY_SCAN
        return ScanBounds(lower, upper)
    return ScanBounds(lower, upper, (start, end))


def scan_bounds(
    start_inclusive: str,
    end_exclusive: str,
    encoding: KeyEncoding,
    *,
    include_internal_keys: bool = False,
) -> ScanBounds:
    """Bounds of a List/RangeScan, as Oxia's ``Pebble.RangeScan``: an empty ``start_inclusive``
    means no lower bound and an empty ``end_exclusive`` means **no upper bound** (List("", "")
    lists every user key); a range whose start does not sort before its end is empty; internal
    keys are left out unless ``include_internal_keys``."""
    lower = encoding.encode(start_inclusive) if start_inclusive else None
    upper = encoding.encode(end_exclusive) if end_exclusive else None
    if lower is not None and upper is not None and lower >= upper:
        return _EMPTY_SCAN
    if include_internal_keys:
        return ScanBounds(lower, upper)
    return _exclude_internal(lower, upper, encoding)


def delete_range_bounds(
    start_inclusive: str, end_exclusive: str, encoding: KeyEncoding
) -> ScanBounds:
    """Bounds of a client DeleteRange (Oxia's ``applyDeleteRange`` -> ``PebbleBatch.RangeScan``),
    which, unlike List, encodes both ends as they are:

    * hierarchical: an empty end encodes to the smallest key, so ``DeleteRange(x, "")`` deletes
      nothing;
    * natural: Go's encoding of "" is a nil slice, i.e. no upper bound, so ``DeleteRange(x, "")``
      deletes every key from ``x`` on.

    Deliberate difference: Oxia does not skip internal keys here (a natural-sorted
    ``DeleteRange(x, "")`` then trips over the notification records and is rejected, or deletes
    the term and session records when notifications are off); pyxia never lets a client
    DeleteRange touch internal keys."""
    lower = encoding.encode(start_inclusive)
    if end_exclusive or encoding.name == "hierarchical":
        upper: bytes | None = encoding.encode(end_exclusive)
    else:
        upper = None
    if upper is not None and lower >= upper:
        return _EMPTY_SCAN
    return _exclude_internal(lower or None, upper, encoding)


# ---------------------------------------------------------------------------------------------
# Sequential keys
# ---------------------------------------------------------------------------------------------

MAX_SEQUENCE_VALUE: Final = (1 << 64) - 1
"""Sequence values are uint64."""


class SequenceKeyError(InvalidArgument):
    """A sequential put (``sequence_key_delta``) that cannot be applied. The write is rejected as
    a whole, on every replica alike (Oxia's ``ErrWriteRejected``)."""


class MissingPartitionKey(SequenceKeyError):
    """Sequential keys need a partition key: every key of a sequence must live in one shard."""


class SequenceWithExpectedVersion(SequenceKeyError):
    """A sequential put cannot carry an expected version id (Oxia answers the put with
    UNEXPECTED_VERSION_ID)."""


class MissingSequenceDeltas(SequenceKeyError):
    """Fewer deltas than the sequence's current key has parts."""


class SequenceDeltaIsZero(SequenceKeyError):
    """The first delta must be > 0, or the new key would not sort after the current one."""


class SequenceOverflow(SequenceKeyError):
    """A part would go past 2^64 - 1, or the sequence's first part is already there. Oxia
    (``db_sequences.go``) adds in uint64 and wraps around, and its lookup of the last key
    (strictly below ``prefix-<2^64-1>``) misses a key whose first part is at the limit, so it
    would hand out that key again (overwriting it) and then lower ones; pyxia rejects the write
    instead."""


class InvalidSequenceKey(SequenceKeyError):
    """The sequence's current last key has a part that is not a uint64 in decimal."""


def sequence_key(prefix: str, values: Sequence[int]) -> str:
    """``prefix`` followed by ``-%020d`` for each value."""
    parts = [prefix]
    for v in values:
        if not 0 <= v <= MAX_SEQUENCE_VALUE:
            raise ValueError(f"sequence value out of range: {v}")
        parts.append(f"-{v:020d}")
    return "".join(parts)


def sequence_search_key(prefix: str) -> str:
    """The key below which the sequence's last key is looked up (Oxia: ``FindLower`` of
    ``prefix-<2^64-1 as %020d>``, then keep the result only if it starts with ``prefix``)."""
    return sequence_key(prefix, [MAX_SEQUENCE_VALUE])


def sequence_updates_range(prefix: str) -> tuple[str, str]:
    """``[start, end)`` whose last key GetSequenceUpdates reports (a reverse scan, internal keys
    excluded). Oxia bounds it with ``math.MaxInt64``, not the uint64 max the put path uses."""
    return sequence_key(prefix, [0]), sequence_key(prefix, [_MAX_INT64])


def _split_suffix(prefix: str, last_key: str | None) -> list[str] | None:
    if last_key is None or not last_key.startswith(prefix):
        return None
    rest = last_key[len(prefix) :]
    if rest == "":
        return []
    if rest[0] != "-":
        # Sorts before every "prefix-..." key: the sequence has no key yet. (Oxia splits such a
        # key on '-' anyway and would take "prefix+a-5" for part 5.)
        return None
    return rest[1:].split("-")


def _parse_part(part: str, last_key: str) -> int:
    # Oxia reads each part with Sscanf("%020d") into a uint64: pyxia accepts 1..20 ASCII digits
    # that fit.
    if not (0 < len(part) <= 20 and part.isascii() and part.isdigit()):
        raise InvalidSequenceKey(f"oxia: sequence key {last_key!r} has a non-numeric part")
    value = int(part)
    if value > MAX_SEQUENCE_VALUE:
        raise InvalidSequenceKey(f"oxia: sequence key {last_key!r} has a part beyond uint64")
    return value


def parse_sequence_suffix(prefix: str, last_key: str | None) -> list[int] | None:
    """The parts of the sequence's current last key (as found below
    :func:`sequence_search_key`): None if ``last_key`` is None or not part of the sequence,
    ``[]`` if it is the bare prefix."""
    parts = _split_suffix(prefix, last_key)
    if parts is None or last_key is None:
        return None
    return [_parse_part(p, last_key) for p in parts]


def validate_sequence_put(*, has_partition_key: bool, has_expected_version: bool) -> None:
    """The request-level checks of a sequential put, in Oxia's order."""
    if not has_partition_key:
        raise MissingPartitionKey("oxia: sequential key operation requires partition key")
    if has_expected_version:
        raise SequenceWithExpectedVersion("oxia: bad version id")


def next_sequence_values(current: Sequence[int] | None, deltas: Sequence[int]) -> list[int]:
    """The parts of the next key of a sequence: part i is ``current[i] + deltas[i]``, a part the
    current key lacks counting from 0. ``current`` None (no key yet) is the same as ``[]``."""
    existing = list(current or ())
    for v in existing:
        if not 0 <= v <= MAX_SEQUENCE_VALUE:
            raise ValueError(f"sequence value out of range: {v}")
    return _next_values(existing, deltas, "")


def _next_values(
    parts: Sequence[str] | Sequence[int], deltas: Sequence[int], last_key: str
) -> list[int]:
    if not deltas:
        raise ValueError("a sequential put needs at least one delta")
    if len(parts) > len(deltas):
        raise MissingSequenceDeltas("oxia: sequential key operation missing some sequence deltas")
    values: list[int] = []
    for i, delta in enumerate(deltas):
        if not 0 <= delta <= MAX_SEQUENCE_VALUE:
            raise ValueError(f"sequence delta out of range: {delta}")
        if i == 0 and delta == 0:
            raise SequenceDeltaIsZero(
                "oxia: sequential key operation requires first delta do be > 0"
            )
        base = 0
        if i < len(parts):
            part = parts[i]
            base = part if isinstance(part, int) else _parse_part(part, last_key)
        value = base + delta
        if value > MAX_SEQUENCE_VALUE:
            raise SequenceOverflow("oxia: sequential key operation overflows the sequence")
        values.append(value)
    return values


def next_sequence_key(prefix: str, last_key: str | None, deltas: Sequence[int]) -> str:
    """The key a sequential put on ``prefix`` creates, given ``last_key``, the greatest key below
    :func:`sequence_search_key` (None if there is none). Checks in Oxia's order: too few deltas,
    then per part: zero first delta, unparsable part, overflow."""
    parts = _split_suffix(prefix, last_key) or []
    return sequence_key(prefix, _next_values(parts, deltas, last_key or ""))
