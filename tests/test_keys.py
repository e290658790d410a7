"""Key formats and key orders (pyxia.common.keys) against Oxia's own test vectors, Go's
net/url outputs, the official Python client's comparator and independent models."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyxia.common import keys as k
from pyxia.common.keys import HIERARCHICAL, NATURAL, KeyEncoding
from pyxia.errors import InvalidArgument

ENCODINGS = [HIERARCHICAL, NATURAL]

# Keys from an alphabet rich in separators, near-separator bytes and multi-byte UTF-8, with some
# internal-key prefixes.
_chars = st.sampled_from(
    ["/", "/", "/", "a", "b", "-", ".", "0", "\x00", "\x01", "~", "é", "日", "\U0010ffff", "_"]
)
_plain = st.text(alphabet=_chars, max_size=12)
KEYS = st.one_of(
    _plain,
    _plain.map(lambda s: "__oxia/" + s),
    _plain.map(lambda s: "__oxia" + s),
    st.text(max_size=8),
)


# Any character but '/' (and no lone surrogates: keys are UTF-8)
NO_SLASH_CHARS = st.characters(exclude_characters="/", exclude_categories=("Cs",))


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


# --- independent models -----------------------------------------------------------------------


def model_hierarchical_compare(a: str, b: str) -> int:
    """Order by (internal, depth), then by code points with '/' above every character."""

    def key(s: str) -> tuple[bool, int, tuple[int, ...]]:
        depth = s.count("/") - (1 if s.endswith("//") else 0)
        return (
            s.startswith("__oxia/"),
            min(depth, 0x7FFF),
            tuple(0x110000 if c == "/" else ord(c) for c in s),
        )

    ka, kb = key(a), key(b)
    return (ka > kb) - (ka < kb)


def model_natural_compare(a: str, b: str) -> int:
    ka = (a.startswith("__oxia/"), a)
    kb = (b.startswith("__oxia/"), b)
    return (ka > kb) - (ka < kb)


def _load_official_compare() -> ModuleType | None:
    candidates = []
    spec = importlib.util.find_spec("oxia")  # does not import the (heavy) package
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "internal" / "compare.py" for p in spec.submodule_search_locations]
    candidates.append(Path("/tmp/oxiadl/x/oxia/internal/compare.py"))
    for path in candidates:
        if path.is_file():
            mspec = importlib.util.spec_from_file_location("_oxia_official_compare", path)
            assert mspec is not None and mspec.loader is not None
            mod = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(mod)
            return mod
    return None


OFFICIAL = _load_official_compare()


# --- Go's url.PathEscape / PathUnescape ---------------------------------------------------------

# Printed by Go 1.26: the ASCII characters url.PathEscape leaves unescaped.
GO_PATH_UNESCAPED = "$&+-.0123456789:=@ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"


def test_path_escape_ascii_table_matches_go() -> None:
    for c in range(128):
        ch = chr(c)
        expected = ch if ch in GO_PATH_UNESCAPED else f"%{c:02X}"
        assert k.path_escape(ch) == expected, repr(ch)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a/b c", "a%2Fb%20c"),
        ("é/ü", "%C3%A9%2F%C3%BC"),
        ("x?y;z,w", "x%3Fy%3Bz%2Cw"),
        ("!'()*", "%21%27%28%29%2A"),
        ("+$&:=@", "+$&:=@"),
        ("\x00\x01", "%00%01"),
        ("日本/語", "%E6%97%A5%E6%9C%AC%2F%E8%AA%9E"),
        ("%", "%25"),
        ("a%2Fb", "a%252Fb"),
        ("", ""),
    ],
)
def test_path_escape_matches_go(raw: str, escaped: str) -> None:
    assert k.path_escape(raw) == escaped
    assert k.path_unescape(escaped) == raw


@pytest.mark.parametrize(
    ("escaped", "raw"),
    [("a+b", "a+b"), ("%2f", "/"), ("%2F%41", "/A"), ("%e6%97%a5", "日"), ("plain", "plain")],
)
def test_path_unescape_matches_go(escaped: str, raw: str) -> None:
    assert k.path_unescape(escaped) == raw


@pytest.mark.parametrize("bad", ["%zz", "abc%", "%4", "a%g1", "%%41"])
def test_path_unescape_rejects_bad_escapes_like_go(bad: str) -> None:
    with pytest.raises(k.InvalidPathEscape, match="invalid URL escape"):
        k.path_unescape(bad)


def test_path_unescape_rejects_non_utf8() -> None:
    with pytest.raises(k.InvalidPathEscape):
        k.path_unescape("%FF")


@given(st.text())
def test_path_escape_roundtrip_and_alphabet(s: str) -> None:
    e = k.path_escape(s)
    assert k.path_unescape(e) == s
    assert all(c in GO_PATH_UNESCAPED or c == "%" or c in "0123456789ABCDEF" for c in e)
    assert "/" not in e and "\x01" not in e


# --- hierarchical encoding: Oxia's encode_test.go ---------------------------------------------

GO_ROUNDTRIP_KEYS = [
    "aaa",
    "zzzzz",
    "",
    "a",
    "/",
    "/aaaa",
    "/aa/a",
    "/aaaa/a",
    "/aaaa/a/a",
    "/bbbbbbbbbb",
    "/aaaa/bbbbbbbbbb",
    "/a/b/a/a/a",
    "/a/b/a/b",
    "__oxia/xyz",
]

# (a, b, sign of bytes.Compare(enc(a), enc(b))) from TestEncodeCompare
GO_ENCODE_COMPARE = [
    ("aaaaa", "aaaaa", 0),
    ("aaaaa", "zzzzz", -1),
    ("bbbbb", "aaaaa", 1),
    ("aaaaa", "", 1),
    ("", "aaaaaa", -1),
    ("", "", 0),
    ("aaaaa", "aaaaaaaaaaa", -1),
    ("aaaaaaaaaaa", "aaa", 1),
    ("a", "/", -1),
    ("/", "a", 1),
    ("/aaaa", "/bbbbb", -1),
    ("/aaaa", "/aa/a", -1),
    ("/aaaa/a", "/aaaa/b", -1),
    ("/aaaa/a/a", "/bbbbbbbbbb", 1),
    ("/aaaa/a/a", "/aaaa/bbbbbbbbbb", 1),
    ("/a/b/a/a/a", "/a/b/a/b", 1),
    ("/a", "/b", -1),
    ("/a", "/a/", -1),
    ("/a/", "/a//", -1),
    ("/a/a-2", "/b/c", -1),
    ("/", "/a", -1),
    ("/a", "//", -1),
    ("/b", "//", -1),
    ("//", "/a/a-1", -1),
    ("/a/a-1", "/a//", -1),
    ("/a//", "/b/c", -1),
]


@pytest.mark.parametrize("key", GO_ROUNDTRIP_KEYS)
def test_hierarchical_roundtrip_go_vectors(key: str) -> None:
    assert k.decode_hierarchical(k.encode_hierarchical(key)) == key


@pytest.mark.parametrize(("a", "b", "expected"), GO_ENCODE_COMPARE)
def test_hierarchical_compare_go_vectors(a: str, b: str, expected: int) -> None:
    ea, eb = k.encode_hierarchical(a), k.encode_hierarchical(b)
    assert (ea > eb) - (ea < eb) == expected
    assert HIERARCHICAL.compare(a, b) == expected


def test_hierarchical_exact_bytes() -> None:
    enc = k.encode_hierarchical
    assert enc("") == b"\x00\x00"
    assert enc("abc") == b"\x00\x00abc"
    assert enc("/a/b") == b"\x00\x02\xffa\xffb"
    assert enc("/a/") == b"\x00\x02\xffa\xff"
    assert enc("/a//") == b"\x00\x02\xffa\xff\xff"  # trailing "//" opens no level
    assert enc("//") == b"\x00\x01\xff\xff"
    assert enc("__oxia/xyz") == b"\x80\x01__oxia\xffxyz"
    session = b"\x80\x02__oxia\xffsession\xff" + b"0" * 15 + b"1"
    assert enc("__oxia/session/0000000000000001") == session
    assert enc("é/x") == b"\x00\x01\xc3\xa9\xffx"


@pytest.mark.parametrize("separators", [0x7FFF - 1, 0x7FFF, 0x8000, 0x8001, 1 << 16])
def test_hierarchical_deep_keys_never_reach_internal_region(separators: int) -> None:
    key = "/" * separators + "a"
    e = k.encode_hierarchical(key)
    assert e[:2] == min(separators, 0x7FFF).to_bytes(2, "big")
    assert not HIERARCHICAL.is_internal(e)
    assert k.decode_hierarchical(e) == key
    assert e < k.encode_hierarchical("__oxia/xyz")


def test_hierarchical_deep_internal_key() -> None:
    key = "__oxia/" + "/" * (1 << 16) + "a"
    e = k.encode_hierarchical(key)
    assert e[:2] == b"\xff\xff"
    assert HIERARCHICAL.is_internal(e)
    assert k.decode_hierarchical(e) == key


def test_hierarchical_decode_short_input_is_empty_key() -> None:
    assert k.decode_hierarchical(b"") == ""
    assert k.decode_hierarchical(b"\x00\x05") == ""


def test_natural_exact_bytes() -> None:
    assert k.encode_natural("a/b") == b"a/b"
    assert k.encode_natural("__oxia/session/123") == b"\xff\xffoxia/session/123"
    assert k.encode_natural("__oxiaX") == b"__oxiaX"
    assert k.decode_natural(b"\xff\xffoxia/session/123") == "__oxia/session/123"


@pytest.mark.parametrize("enc", ENCODINGS, ids=lambda e: e.name)
def test_internal_keys_sort_last(enc: KeyEncoding) -> None:
    # TestEncodeInternalKeys
    assert not enc.is_internal(enc.encode("my-key"))
    assert not enc.is_internal(enc.encode("/my-key"))
    assert enc.is_internal(enc.encode("__oxia/"))
    assert enc.is_internal(enc.encode("__oxia/xyz"))
    assert enc.compare("my-key", "__oxia/xyz") == -1
    assert enc.compare("/my-key", "__oxia/xyz") == -1
    assert enc.decode(enc.encode("__oxia/xyz")) == "__oxia/xyz"


# (a, b, natural, hierarchical, legacy CompareWithSlash) from Oxia's oxia/key_order_test.go
GO_CLIENT_KEY_ORDER = [
    ("a", "a", 0, 0, 0),
    ("a0", "a/y/z", 1, -1, -1),
    ("a/x", "ab/y", -1, 1, -1),
    ("b/x", "a/y/z", 1, -1, 1),
    ("a/z", "a/y/z", 1, -1, -1),
    ("__oxia/x", "z/z", 1, 1, -1),
]


@pytest.mark.parametrize(("a", "b", "natural", "hierarchical", "legacy"), GO_CLIENT_KEY_ORDER)
def test_key_orders_match_go_client(
    a: str, b: str, natural: int, hierarchical: int, legacy: int
) -> None:
    assert NATURAL.compare(a, b) == natural and NATURAL.compare(b, a) == -natural
    assert HIERARCHICAL.compare(a, b) == hierarchical
    assert HIERARCHICAL.compare(b, a) == -hierarchical
    assert k.compare_with_slash(a, b) == legacy and k.compare_with_slash(b, a) == -legacy


# --- properties ---------------------------------------------------------------------------------


@given(KEYS)
def test_roundtrip(key: str) -> None:
    for enc in ENCODINGS:
        assert enc.decode(enc.encode(key)) == key
        assert enc.is_internal(enc.encode(key)) == k.is_internal_key(key)


@settings(max_examples=150)
@given(KEYS, KEYS)
def test_compare_is_encoded_byte_order_and_matches_model(a: str, b: str) -> None:
    for enc, model in [
        (HIERARCHICAL, model_hierarchical_compare),
        (NATURAL, model_natural_compare),
    ]:
        ea, eb = enc.encode(a), enc.encode(b)
        c = enc.compare(a, b)
        assert c == (ea > eb) - (ea < eb)
        assert c == model(a, b)
        assert enc.compare(b, a) == -c
        assert (c == 0) == (a == b)


@settings(max_examples=150)
@given(KEYS, KEYS)
def test_compare_with_slash_matches_official_client(a: str, b: str) -> None:
    if OFFICIAL is None:
        pytest.skip("official oxia client (compare.py) not available")
    official: Callable[[str, str], int] = OFFICIAL.compare_with_slash
    assert k.compare_with_slash(a, b) == _sign(official(a, b))


@given(st.text(alphabet=NO_SLASH_CHARS, max_size=10), st.text(alphabet=NO_SLASH_CHARS, max_size=10))
def test_all_orders_agree_without_separators(a: str, b: str) -> None:
    expected = (a > b) - (a < b)
    assert HIERARCHICAL.compare(a, b) == expected
    assert NATURAL.compare(a, b) == expected
    assert k.compare_with_slash(a, b) == expected
    if OFFICIAL is not None:
        assert _sign(OFFICIAL.compare_with_slash(a, b)) == expected


def test_encoding_lookup() -> None:
    assert k.encoding_by_name("") is HIERARCHICAL
    assert k.encoding_by_name("hierarchical") is HIERARCHICAL
    assert k.encoding_by_name("natural") is NATURAL
    assert k.encoding_for_key_sorting(0) is HIERARCHICAL
    assert k.encoding_for_key_sorting(1) is NATURAL
    assert k.encoding_for_key_sorting(2) is HIERARCHICAL
    with pytest.raises(ValueError, match="unknown"):
        k.encoding_by_name("bytes")
    with pytest.raises(ValueError, match="unknown"):
        k.encoding_for_key_sorting(3)


# --- internal keys ------------------------------------------------------------------------------


def test_internal_key_names() -> None:
    assert k.COMMIT_OFFSET_KEY == "__oxia/commit-offset"
    assert k.LAST_VERSION_ID_KEY == "__oxia/last-version-id"
    assert k.TERM_KEY == "__oxia/term"
    assert k.TERM_OPTIONS_KEY == "__oxia/term-options"
    assert k.CHECKSUM_KEY == "__oxia/checksum"
    assert k.feature_flag_key(3) == "__oxia/features/0000000003"
    assert k.parse_feature_flag_key("__oxia/features/0000000003") == 3
    for bad in [
        "__oxia/features/3",
        "__oxia/features/-000000003",
        "__oxia/features/abc",
        "__oxia/feature/0000000003",
    ]:
        with pytest.raises(k.KeyFormatError):
            k.parse_feature_flag_key(bad)


def test_session_keys() -> None:
    assert k.session_key(0x1A) == "__oxia/session/000000000000001a"
    assert k.is_session_key("__oxia/session/000000000000001a")
    assert not k.is_session_key("__oxia/session/000000000000001a/x")
    assert k.parse_session_key("__oxia/session/000000000000001a") == 26
    assert k.session_shadow_key(26, "/a b/c") == "__oxia/session/000000000000001a/%2Fa%20b%2Fc"
    assert k.parse_session_shadow_key("__oxia/session/000000000000001a/%2Fa%20b%2Fc") == (
        26,
        "/a b/c",
    )
    for bad in [
        "__oxia/session/1a",
        "__oxia/session/zzzzzzzzzzzzzzzz",
        "__oxia/session/ffffffffffffffff",
    ]:
        with pytest.raises(k.KeyFormatError):
            k.parse_session_key(bad)
    for bad in [
        "__oxia/session/000000000000001a",
        "__oxia/session/000000000000001ax",
        "__oxia/session/000000000000001a/%zz",
    ]:
        with pytest.raises(k.KeyFormatError):
            k.parse_session_shadow_key(bad)
    with pytest.raises(ValueError, match="session id"):
        k.session_key(-1)


@given(st.integers(0, (1 << 63) - 1), st.text())
def test_session_shadow_key_roundtrip(session_id: int, key: str) -> None:
    shadow = k.session_shadow_key(session_id, key)
    assert k.parse_session_shadow_key(shadow) == (session_id, key)
    assert not k.is_session_key(shadow)
    assert k.is_session_key(k.session_key(session_id))


@given(st.integers(0, 1000), st.integers(0, 1000), st.text(max_size=6), st.text(max_size=6))
def test_session_shadow_range_holds_exactly_the_sessions_shadow_keys(
    sid: int, other: int, key: str, key2: str
) -> None:
    for enc in ENCODINGS:
        start, end = k.session_shadow_range(sid, enc)
        assert start <= enc.encode(k.session_shadow_key(sid, key)) < end
        inside_other = start <= enc.encode(k.session_shadow_key(other, key2)) < end
        assert inside_other == (other == sid)
        assert not start <= enc.encode(k.session_key(sid)) < end
        assert not start <= enc.encode(k.session_key(other)) < end
    # With the hierarchical encoding the end is exactly Oxia's "<session key>//".
    assert k.session_shadow_range(sid, HIERARCHICAL)[1] == k.encode_hierarchical(
        k.session_key(sid) + "//"
    )


@given(st.integers(0, 1000), st.text(max_size=6))
def test_sessions_list_range(sid: int, key: str) -> None:
    for enc in ENCODINGS:
        lo, hi = enc.encode(k.SESSIONS_LIST_START), enc.encode(k.SESSIONS_LIST_END)
        assert lo <= enc.encode(k.session_key(sid)) < hi
    # With the hierarchical encoding the shadow keys are one level deeper: outside.
    lo, hi = HIERARCHICAL.encode(k.SESSIONS_LIST_START), HIERARCHICAL.encode(k.SESSIONS_LIST_END)
    assert not lo <= HIERARCHICAL.encode(k.session_shadow_key(sid, key)) < hi


def test_notification_keys() -> None:
    assert k.notification_key(255) == "__oxia/notifications/00000000000000ff"
    assert k.parse_notification_key("__oxia/notifications/00000000000000ff") == 255
    assert k.FIRST_NOTIFICATION_KEY == "__oxia/notifications/0000000000000000"
    assert k.LAST_NOTIFICATION_KEY == "__oxia/notifications/7fffffffffffffff"
    with pytest.raises(k.KeyFormatError):
        k.parse_notification_key("__oxia/notifications/ff")


@given(st.integers(0, (1 << 63) - 1), st.integers(0, (1 << 63) - 1))
def test_notification_keys_sort_by_offset(a: int, b: int) -> None:
    for enc in ENCODINGS:
        c = enc.compare(k.notification_key(a), k.notification_key(b))
        assert c == (a > b) - (a < b)


def test_index_entry_keys() -> None:
    key = k.index_entry_key("by-name", "alice", "/users/1")
    assert key == "__oxia/idx/by-name/alice\x01%2Fusers%2F1"
    assert k.parse_index_entry_key(key) == k.IndexEntry("by-name", "alice", "/users/1")
    assert k.index_search_key("by-name", "al") == "__oxia/idx/by-name/al"
    assert k.index_scan_range("i", "a", "c") == ("__oxia/idx/i/a", "__oxia/idx/i/c")
    for bad in [
        "__oxia/idx/name-only",
        "__oxia/idx/i/no-separator",
        "__oxia/idxx/i/a\x01b",
        "__oxia/idx/i/a\x01%z",
    ]:
        with pytest.raises(k.KeyFormatError):
            k.parse_index_entry_key(bad)


@given(st.text(alphabet=NO_SLASH_CHARS, max_size=6), st.text(max_size=8), st.text(max_size=8))
def test_index_entry_roundtrip(name: str, secondary: str, primary: str) -> None:
    # Secondary keys may hold '/' and even \x01: the last \x01 is the boundary.
    entry = k.index_entry_key(name, secondary, primary)
    assert k.parse_index_entry_key(entry) == k.IndexEntry(name, secondary, primary)


# --- scan bounds --------------------------------------------------------------------------------

BOUND_KEYS = st.one_of(_plain, _plain.map(lambda s: "__oxia/" + s))


def _in_list_model(key: str, start: str, end: str, enc: KeyEncoding, internal: bool) -> bool:
    if k.is_internal_key(key) and not internal:
        return False
    if start and enc.compare(key, start) < 0:
        return False
    return not (end and enc.compare(key, end) >= 0)


@settings(max_examples=100)
@given(
    st.lists(BOUND_KEYS, max_size=10),
    BOUND_KEYS | st.just(""),
    BOUND_KEYS | st.just(""),
    st.booleans(),
)
def test_scan_bounds_match_list_semantics(
    keys: list[str], start: str, end: str, internal: bool
) -> None:
    for enc in ENCODINGS:
        bounds = k.scan_bounds(start, end, enc, include_internal_keys=internal)
        for key in keys:
            assert bounds.contains(enc.encode(key)) == _in_list_model(
                key, start, end, enc, internal
            ), (enc, key)


def test_list_with_empty_end_is_unbounded() -> None:
    for enc in ENCODINGS:
        b = k.scan_bounds("", "", enc)
        assert b.contains(enc.encode("zzz/zzz/zzz"))
        assert not b.contains(enc.encode(k.COMMIT_OFFSET_KEY))
        assert k.scan_bounds("", "", enc, include_internal_keys=True).contains(
            enc.encode(k.COMMIT_OFFSET_KEY)
        )
    # The hierarchical internal region is cut off by the upper bound.
    assert k.scan_bounds("", "", HIERARCHICAL) == k.ScanBounds(None, b"\x80")
    assert k.scan_bounds("b", "a", HIERARCHICAL).empty


def test_children_listing() -> None:
    # List("/a/", "/a//") yields the direct children of /a only.
    b = k.scan_bounds("/a/", "/a//", HIERARCHICAL)
    assert b.contains(k.encode_hierarchical("/a/x"))
    assert b.contains(k.encode_hierarchical("/a/"))
    assert not b.contains(k.encode_hierarchical("/a/x/y"))
    assert not b.contains(k.encode_hierarchical("/b"))
    assert not b.contains(k.encode_hierarchical("/a"))


@settings(max_examples=100)
@given(st.lists(BOUND_KEYS, max_size=10), BOUND_KEYS | st.just(""), BOUND_KEYS | st.just(""))
def test_delete_range_bounds(keys: list[str], start: str, end: str) -> None:
    for enc in ENCODINGS:
        bounds = k.delete_range_bounds(start, end, enc)
        for key in keys:
            if k.is_internal_key(key):
                expected = False
            elif end == "":
                # hierarchical: "" is the smallest key -> nothing; natural: no upper bound
                expected = enc is NATURAL and enc.compare(key, start) >= 0
            else:
                expected = enc.compare(key, start) >= 0 and enc.compare(key, end) < 0
            assert bounds.contains(enc.encode(key)) == expected, (enc, key)


# --- sequences ----------------------------------------------------------------------------------


def seq(prefix: str, *values: int) -> str:
    return k.sequence_key(prefix, values)


def test_sequence_key_format() -> None:
    assert seq("a", 1) == "a-00000000000000000001"
    assert seq("a", 1, 10) == "a-00000000000000000001-00000000000000000010"
    assert k.sequence_search_key("a") == "a-18446744073709551615"
    assert k.sequence_updates_range("a") == ("a-00000000000000000000", "a-09223372036854775807")
    with pytest.raises(ValueError, match="out of range"):
        seq("a", -1)


def test_next_sequence_key_follows_oxia() -> None:
    # From Oxia's db_sequences_test.go
    assert k.next_sequence_key("seq", None, [1]) == seq("seq", 1)
    assert k.next_sequence_key("seq", seq("seq", 1), [2]) == seq("seq", 3)
    assert k.next_sequence_key("seq", seq("seq", 3), [1]) == seq("seq", 4)
    assert k.next_sequence_key("seq", None, [1, 10]) == seq("seq", 1, 10)
    assert k.next_sequence_key("seq", seq("seq", 1, 10), [2, 5]) == seq("seq", 3, 15)
    # More deltas than parts: the new parts count from 0
    assert k.next_sequence_key("seq", seq("seq", 4), [1, 7]) == seq("seq", 5, 7)
    # The bare prefix as last key, or an unrelated key
    assert k.next_sequence_key("seq", "seq", [1]) == seq("seq", 1)
    assert k.next_sequence_key("seq", "other", [2]) == seq("seq", 2)
    assert k.next_sequence_key("seq", "seq+a-00000000000000000005", [1]) == seq("seq", 1)


def test_sequence_errors() -> None:
    with pytest.raises(k.MissingSequenceDeltas):
        k.next_sequence_key("seq", seq("seq", 1, 5), [1])
    with pytest.raises(k.SequenceDeltaIsZero):
        k.next_sequence_key("seq", None, [0, 1])
    # Missing deltas is checked first
    with pytest.raises(k.MissingSequenceDeltas):
        k.next_sequence_key("seq", seq("seq", 1, 5), [0])
    with pytest.raises(k.SequenceOverflow):
        k.next_sequence_key("seq", seq("seq", k.MAX_SEQUENCE_VALUE - 1), [2])
    assert k.next_sequence_key("seq", seq("seq", k.MAX_SEQUENCE_VALUE - 1), [1]) == seq(
        "seq", k.MAX_SEQUENCE_VALUE
    )
    with pytest.raises(k.SequenceOverflow):
        k.next_sequence_values([1, k.MAX_SEQUENCE_VALUE], [1, 1])
    for bad in [
        "seq-abc",
        "seq-00000000000000000001-",
        "seq-000000000000000000001",
        "seq-99999999999999999999",
    ]:
        with pytest.raises(k.InvalidSequenceKey):
            k.next_sequence_key("seq", bad, [1, 1])
    with pytest.raises(ValueError, match="at least one delta"):
        k.next_sequence_key("seq", None, [])
    with pytest.raises(k.MissingPartitionKey):
        k.validate_sequence_put(has_partition_key=False, has_expected_version=True)
    with pytest.raises(k.SequenceWithExpectedVersion):
        k.validate_sequence_put(has_partition_key=True, has_expected_version=True)
    k.validate_sequence_put(has_partition_key=True, has_expected_version=False)
    assert issubclass(k.SequenceKeyError, InvalidArgument)


def test_parse_sequence_suffix() -> None:
    assert k.parse_sequence_suffix("s", None) is None
    assert k.parse_sequence_suffix("s", "t-00000000000000000001") is None
    assert k.parse_sequence_suffix("s", "s") == []
    assert k.parse_sequence_suffix("s", seq("s", 3, 4)) == [3, 4]
    with pytest.raises(k.InvalidSequenceKey):
        k.parse_sequence_suffix("s", "s-x")


@given(
    st.text(alphabet="ab/-", max_size=5),
    st.lists(st.integers(0, 1 << 40), min_size=1, max_size=3),
    st.lists(st.integers(1, 1 << 40), min_size=1, max_size=3),
)
def test_sequence_keys_only_grow(prefix: str, current: list[int], deltas: list[int]) -> None:
    if len(deltas) < len(current):
        deltas = deltas + [1] * (len(current) - len(deltas))
    last = k.sequence_key(prefix, current)
    new = k.next_sequence_key(prefix, last, deltas)
    assert k.parse_sequence_suffix(prefix, new) == k.next_sequence_values(current, deltas)
    for enc in ENCODINGS:
        assert enc.compare(last, new) < 0
        # And the new key is still below the lookup key of the next put
        assert enc.compare(new, k.sequence_search_key(prefix)) < 0


@given(
    st.text(alphabet=st.sampled_from(["/", "a", "b", "_", "o", "x", "i", "é", "\x00"]), max_size=20)
    | st.text(max_size=30)
    | st.builds(lambda s: "__oxia/" + s, st.text())
)
def test_native_hierarchical_encoder_matches_reference(key: str) -> None:
    from pyxia._native import encode_hierarchical as native

    assert native(key) == k.encode_hierarchical(key)
