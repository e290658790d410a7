"""The pure parts of public-port security: Oxia's OIDC parameters, the access policy, the
migration-field detection, a client's token source."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxia.errors import InvalidArgument, PermissionDenied, Unauthenticated
from pyxia.proto import client_pb2 as pb
from pyxia.security.oidc import AuthConfigError, Principal, bearer_token, parse_oidc_params
from pyxia.security.policy import AccessPolicy, PolicyError, load_policy, parse_policy
from pyxia.security.public import _CALLER, PublicAccess, PublicAuthOptions
from pyxia.security.tokens import TokenError, TokenSource
from pyxia.storage.apply import override_fields_used

# -- Oxia's parameters ----------------------------------------------------------------------------


def test_legacy_params() -> None:
    got = parse_oidc_params(
        '{"allowedIssueURLs": "https://a, https://b", "allowedAudiences": "x, y",'
        ' "userNameClaim": "email"}'
    )
    assert [i.url for i in got] == ["https://a", "https://b"]
    assert all(i.audiences == {"x", "y"} and i.user_name_claim == "email" for i in got)
    d = parse_oidc_params('{"allowedIssueURLs": "https://a", "allowedAudiences": "x"}')
    assert d[0].user_name_claim == "sub"


def test_per_issuer_params() -> None:
    got = parse_oidc_params(
        json.dumps(
            {
                "issuers": {
                    "https://a": {"allowedAudiences": "x"},
                    "https://b": {
                        "allowedAudiences": "y,z",
                        "userNameClaim": "name",
                        "staticKeyFile": "/k.pem",
                    },
                }
            }
        )
    )
    a, b = got
    assert (a.url, a.audiences, a.user_name_claim, a.static_key_file) == (
        "https://a",
        {"x"},
        "sub",
        None,
    )
    assert (b.audiences, b.user_name_claim, str(b.static_key_file)) == (
        {"y", "z"},
        "name",
        "/k.pem",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "required"),
        ("[]", "JSON object"),
        ("{", "not valid JSON"),
        ("{}", "no issuer"),
        ('{"allowedIssueURLs": "https://a"}', "allowedAudiences is empty"),
        ('{"allowedIssueURLs": "https://a", "allowedAudiences": " , "}', "empty"),
        ('{"issuers": {"https://a": {}}}', "allowedAudiences is empty"),
        ('{"issuers": {"https://a": {"allowedAudiences": "x", "audience": "y"}}}', "unknown key"),
        ('{"allowedIssuers": "https://a"}', "unknown key"),
        ('{"allowedIssueURLs": "ftp://a", "allowedAudiences": "x"}', "is not an http"),
        ('{"issuers": {"": {"allowedAudiences": "x"}}}', "empty"),
    ],
)
def test_bad_params(text: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        parse_oidc_params(text)


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("abc") == "abc"  # Oxia trims the prefix if present
    for bad in (None, "", "Bearer ", "  ", "Basic dXNlcg=="):
        with pytest.raises(Unauthenticated):
            bearer_token(bad)


# -- the policy -----------------------------------------------------------------------------------

POLICY = {
    "rules": [
        {"users": ["alice"], "namespaces": ["default", "app-*"], "allow": ["read", "write"]},
        {"claims": {"groups": "ops"}, "namespaces": ["*"], "allow": ["read", "migrate"]},
        {"claims": {"realm.roles": ["auditor", "admin"]}, "namespaces": ["*"], "allow": "read"},
        {"users": "*", "namespaces": "public", "allow": ["read"]},
    ]
}


def test_policy_grants() -> None:
    p = parse_policy(POLICY)
    assert p.grants("alice", {}, "default") == {"read", "write"}
    assert p.grants("alice", {}, "app-x") == {"read", "write"}
    assert p.grants("alice", {}, "other") == frozenset()
    assert p.grants("alice", {}, "public") == {"read"}
    assert p.grants("bob", {"groups": ["dev", "ops"]}, "x") == {"read", "migrate"}
    assert p.grants("bob", {"groups": "ops"}, "x") == {"read", "migrate"}
    assert p.grants("bob", {"groups": ["dev"]}, "x") == frozenset()
    assert p.grants("eve", {"realm": {"roles": ["admin"]}}, "x") == {"read"}
    assert p.grants("eve", {"realm": {"roles": "user"}}, "x") == frozenset()
    d = AccessPolicy.default()
    assert d.grants("anyone", {}, "any") == {"read", "write"}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ([], "one key, rules"),
        ({"rules": {}}, "must be a list"),
        ({"rules": [{"namespaces": ["*"], "allow": ["read"]}]}, "needs users or claims"),
        ({"rules": [{"users": ["a"], "allow": ["read"]}]}, "needs namespaces"),
        ({"rules": [{"users": ["a"], "namespaces": ["*"]}]}, "needs allow"),
        ({"rules": [{"users": ["a"], "namespaces": ["*"], "allow": ["admin"]}]}, "unknown action"),
        ({"rules": [{"user": ["a"], "namespaces": ["*"], "allow": ["read"]}]}, "unknown key"),
        ({"rules": [{"users": [], "namespaces": ["*"], "allow": ["read"]}]}, "non-empty"),
        ({"rules": [{"claims": {}, "namespaces": ["*"], "allow": ["read"]}]}, "non-empty"),
    ],
)
def test_bad_policies(doc: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(doc)


def test_policy_file_uses_the_safe_loader(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(f)


def test_access_without_and_with_auth() -> None:
    open_access = PublicAccess()
    open_access.check("ns", "read")
    open_access.check("ns", "write")
    with pytest.raises(PermissionDenied, match="--allow-migration-fields"):
        open_access.check("ns", "migrate")
    with pytest.raises(PermissionDenied):
        open_access.check("ns", "internal-keys")
    flagged = PublicAccess(allow_migration_fields=True)
    flagged.check("ns", "migrate")
    flagged.check("ns", "internal-keys")
    with pytest.raises(AuthConfigError, match="needs --auth-provider-name"):
        PublicAccess.from_options(PublicAuthOptions(policy_file=Path("/p.yaml")))
    with pytest.raises(AuthConfigError, match="unsupported"):
        PublicAccess.from_options(PublicAuthOptions(provider="ldap"))


def test_authenticated_grants_are_memoized_per_principal() -> None:
    from pyxia.security.oidc import OidcAuthenticator, parse_oidc_params

    authn = OidcAuthenticator(
        parse_oidc_params('{"allowedIssueURLs":"https://a","allowedAudiences":"x"}')
    )
    access = PublicAccess(authn, parse_policy(POLICY), allow_migration_fields=True)
    p = Principal("alice", "https://a", {}, 1e12)
    tok = _CALLER.set(p)
    try:
        access.check("default", "write")
        access.check("default", "migrate")  # the flag adds migrate where write is granted
        with pytest.raises(PermissionDenied, match="user 'alice' may not write namespace 'x'"):
            access.check("x", "write")
        assert set(p.grants) == {"default", "x"}
    finally:
        _CALLER.reset(tok)
    with pytest.raises(Unauthenticated):
        access.check("default", "read")  # no caller: never open when auth is on


# -- the migration fields -------------------------------------------------------------------------


def test_override_fields_detection() -> None:
    plain = pb.WriteRequest(puts=[pb.PutRequest(key="PH", value=b"HPHP\xc8\xd0")])
    assert not override_fields_used(plain, plain.SerializeToString())
    assert not override_fields_used(plain)
    o = pb.WriteRequest(
        puts=[pb.PutRequest(key="/a"), pb.PutRequest(key="/b", override_version_id=0)]
    )
    assert override_fields_used(o, o.SerializeToString())
    m = pb.WriteRequest(puts=[pb.PutRequest(key="/a", override_modifications_count=3)])
    assert override_fields_used(m, m.SerializeToString())
    n = pb.WriteRequest(puts=[pb.PutRequest(key="/a", override_version_id=-1)])
    with pytest.raises(InvalidArgument, match="override_version_id must be >= 0"):
        override_fields_used(n, n.SerializeToString())


def test_an_overlong_tag_does_not_slip_past_the_byte_filter() -> None:
    # PutRequest{key: "/a", override_version_id: 5} with field 9's tag as a 2-byte varint.
    put = b"\x0a\x02/a" + b"\xc8\x00" + b"\x05"
    raw = b"\x12" + bytes([len(put)]) + put  # WriteRequest.puts = field 2
    req = pb.WriteRequest.FromString(raw)
    assert req.puts[0].HasField("override_version_id")
    assert b"\x48" not in raw
    assert override_fields_used(req, raw)


@given(
    st.lists(
        st.tuples(
            st.text(max_size=8),
            st.binary(max_size=16),
            st.none() | st.integers(0, 2**40),
            st.none() | st.integers(0, 2**40),
        ),
        max_size=5,
    )
)
def test_override_detection_matches_presence(
    puts: list[tuple[str, bytes, int | None, int | None]],
) -> None:
    req = pb.WriteRequest()
    expected = False
    for key, value, v, m in puts:
        p = req.puts.add(key=key, value=value)
        if v is not None:
            p.override_version_id = v
            expected = True
        if m is not None:
            p.override_modifications_count = m
            expected = True
    assert override_fields_used(req, req.SerializeToString()) == expected


# -- the client's token source --------------------------------------------------------------------


def test_token_sources(tmp_path: Path) -> None:
    assert TokenSource("abc").metadata() == (("authorization", "Bearer abc"),)
    assert TokenSource("Bearer abc").metadata() == (("authorization", "Bearer abc"),)
    with pytest.raises(TokenError):
        TokenSource("a", token_file=tmp_path / "x")
    with pytest.raises(TokenError, match="cannot read"):
        TokenSource(token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(TokenError, match="empty"):
        TokenSource(token_file=tmp_path / "empty")
    f = tmp_path / "t"
    f.write_text("one\n")
    src = TokenSource(token_file=f, check_interval_s=0)
    g = src.generation
    assert src.metadata()[0][1] == "Bearer one"
    f.write_text("two-longer\n")
    os.utime(f, ns=(1, 1))
    assert src.metadata()[0][1] == "Bearer two-longer"
    assert src.generation == g + 1
    calls = iter(["p1", "p1", "p2"])
    prov = TokenSource(provider=lambda: next(calls), check_interval_s=0)
    assert prov.metadata()[0][1] == "Bearer p1"
    assert prov.metadata()[0][1] == "Bearer p2"

    def broken() -> str:
        raise RuntimeError("idp down")

    state = {"fail": False}

    def flaky() -> str:
        if state["fail"]:
            return broken()
        return "ok"

    fl = TokenSource(provider=flaky, check_interval_s=0)
    state["fail"] = True
    assert fl.metadata()[0][1] == "Bearer ok"  # keeps the previous token
