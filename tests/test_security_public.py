"""The public port with authentication: a real local OIDC issuer (discovery + JWKS over HTTP,
tokens signed with keys made here), a standalone server verifying them, pyxia's clients and raw
gRPC calls. Also the privileged fields and malformed requests, with and without auth."""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from oidc_issuer import Issuer, SigningKey
from public_server import SERVICE, ServerThread, call, code_of, error_of
from pyxia import Client, KeyNotFound, PermissionDenied, TsoClient, Unauthenticated
from pyxia.proto import client_pb2 as pb
from pyxia.proto import tso_pb2
from pyxia.security.public import PublicAuthOptions
from pyxia.server.public_rpc import SERVICE_NAMES, OxiaClientService
from servers import wait_for

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT

POLICY = """
rules:
  - name: operators
    claims: {groups: ops}
    namespaces: ["*"]
    allow: [read, write, migrate, internal-keys]
  - users: [alice]
    namespaces: [default, tso]
    allow: [read, write]
  - users: [bob]
    namespaces: ["oth*"]
    allow: [read]
"""


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    try:
        yield i
    finally:
        i.close()


def _server(tmp_path: Path, issuer: Issuer, **kw: Any) -> ServerThread:
    auth = PublicAuthOptions(
        provider="oidc",
        provider_params=issuer.params(userNameClaim=kw.pop("claim", "sub")),
        key_min_refresh_interval_s=kw.pop("min_refresh", 0.0),
        **kw,
    )
    return ServerThread(tmp_path, auth=auth)


@pytest.fixture
def server(tmp_path: Path, issuer: Issuer) -> Iterator[ServerThread]:
    s = _server(tmp_path, issuer)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def read_req(key: str = "/k", shard: int = 0) -> pb.ReadRequest:
    return pb.ReadRequest(shard=shard, gets=[pb.GetRequest(key=key, include_value=True)])


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


# -- authentication -------------------------------------------------------------------------------


def test_a_valid_token_works_through_the_client(server: ServerThread, issuer: Issuer) -> None:
    with Client(server.address, auth_token=issuer.token("alice")) as c:
        v = c.put("/a", b"1")
        assert c.get("/a").value == b"1"
        c.put("/b", b"2")
        assert c.list("/", "/z") == ["/a", "/b"]
        assert c.get("/a").version.version_id == v.version.version_id


def test_no_token_is_refused_at_once(server: ServerThread) -> None:
    t0 = time.monotonic()
    with pytest.raises(Unauthenticated, match="no bearer token"):
        Client(server.address, request_timeout_s=20)
    assert time.monotonic() - t0 < 10  # not retried until the timeout


def test_bad_tokens_are_unauthenticated(
    server: ServerThread, issuer: Issuer, channel: grpc.Channel
) -> None:
    now = int(time.time())
    other = Issuer()  # a real issuer the server does not trust
    try:
        stranger = other.token("alice")
    finally:
        other.close()
    forged_key = SigningKey()  # same kid, not the issuer's key
    pub_pem = issuer.key.public_pem()
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": issuer.key.kid}
    signing_input = f"{_b64(hs_header)}.{_b64(issuer.claims())}"
    hs_sig = hmac.new(pub_pem, signing_input.encode(), sha256).digest()
    hs_with_public_key = (
        signing_input + "." + base64.urlsafe_b64encode(hs_sig).rstrip(b"=").decode()
    )
    none_token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(issuer.claims())}."
    good = issuer.token("alice")
    head, _body, sig = good.split(".")
    tampered = f"{head}.{_b64(issuer.claims('root'))}.{sig}"
    cases = {
        "expired": issuer.token(exp=now - 120, iat=now - 600),
        "wrong audience": issuer.token(aud="someone-else"),
        "wrong issuer": stranger,
        "bad signature": issuer.token(key=forged_key, kid=issuer.key.kid),
        "tampered claims": tampered,
        "alg none": none_token,
        "HS256 keyed with the public key": hs_with_public_key,
        "not yet valid": issuer.token(nbf=now + 3600),
        "no exp": jwt.encode(
            {k: v for k, v in issuer.claims().items() if k != "exp"},
            issuer.key.private,
            algorithm="RS256",
            headers={"kid": issuer.key.kid},
        ),
        "garbage": "not-a-jwt",
        "unknown kid": issuer.token(kid="nope"),
        "no user name": issuer.token(sub=""),
    }
    for what, token in cases.items():
        e = error_of(lambda t=token: call(channel, "Read", read_req(), token=t))
        assert e.code() == UNAUTH, (what, e)  # type: ignore[attr-defined]
    # and the good one passes
    assert call(channel, "Read", read_req(), token=good)
    assert (
        code_of(
            lambda: call(
                channel, "Read", read_req(), metadata=[("authorization", "Basic dXNlcjpwdw==")]
            )
        )
        == UNAUTH
    )


def test_every_public_method_refuses_a_call_without_a_token(
    server: ServerThread, channel: grpc.Channel
) -> None:
    handlers = OxiaClientService(server.node.server.director, server.node.server.assignments)
    methods: dict[str, Any] = {}
    for service in SERVICE_NAMES:
        for name, h in handlers.method_handlers().items():
            methods[f"/{service}/{name}"] = h
    for extra in server.node.server.extra_public_handlers:
        methods.update(extra._method_handlers)  # type: ignore[attr-defined]
    assert "/tsoracle.v1.TsoService/GetTs" in methods
    assert len(methods) >= 2 * 11 + 1
    for method, h in methods.items():
        kind = next(
            k
            for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if getattr(h, k)
        )
        e = error_of(lambda m=method, k=kind: call(channel, m, b"", kind=k, timeout=5))
        assert e.code() == UNAUTH, (method, e)  # type: ignore[attr-defined]
        assert "bearer token" in (e.details() or "")  # type: ignore[attr-defined]
    # Health stays open (probes carry no token).
    from grpc_health.v1 import health_pb2

    r = call(
        channel, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(), kind="unary_unary"
    )
    assert health_pb2.HealthCheckResponse.FromString(r[0]).status == 1


def test_key_rotation_at_the_issuer_is_picked_up(server: ServerThread, issuer: Issuer) -> None:
    with Client(server.address, auth_token=issuer.token("alice")) as c:
        c.put("/r", b"1")
    issuer.rotate(drop_old=True)
    fetches = issuer.jwks_fetches
    with Client(server.address, auth_token=issuer.token("alice")) as c:
        assert c.get("/r").value == b"1"
    assert issuer.jwks_fetches == fetches + 1


def test_unknown_key_ids_do_not_hammer_the_issuer(tmp_path: Path, issuer: Issuer) -> None:
    s = _server(tmp_path, issuer, min_refresh=60.0)
    try:
        fetches = issuer.jwks_fetches
        with grpc.insecure_channel(s.address) as ch:
            for i in range(20):
                t = issuer.token(kid=f"made-up-{i}")
                assert code_of(lambda t=t: call(ch, "Read", read_req(), token=t)) == UNAUTH
        assert issuer.jwks_fetches <= fetches + 1
    finally:
        s.close()


def test_a_slow_issuer_does_not_stall_calls_with_known_keys(
    server: ServerThread, issuer: Issuer, channel: grpc.Channel
) -> None:
    good = issuer.token("alice")
    assert call(channel, "Read", read_req(), token=good)
    issuer.delay_s = 3.0
    started = issuer.requests_started
    import threading

    slow = threading.Thread(
        target=lambda: code_of(
            lambda: call(channel, "Read", read_req(), token=issuer.token(kid="x"))
        )
    )
    slow.start()
    try:
        wait_for(lambda: issuer.requests_started > started, what="a slow refresh under way")
        assert slow.is_alive()
        t0 = time.monotonic()
        fresh = issuer.token("alice", jti="another")  # a new token: verified, not cached
        assert call(channel, "Read", read_req(), token=fresh)
        assert time.monotonic() - t0 < 1.5
    finally:
        slow.join(30)
        issuer.delay_s = 0.0


def test_token_provider_and_file_refresh_without_reconnecting(
    server: ServerThread, issuer: Issuer, tmp_path: Path
) -> None:
    tokens = [issuer.token("alice")]
    with Client(server.address, auth_token_provider=lambda: tokens[-1]) as c:
        c.put("/p", b"1")
        tokens.append("garbage")  # the next refresh yields a refused token
        wait_for(lambda: _fails(lambda: c.get("/p"), Unauthenticated), timeout=10, what="refusal")
        tokens.append(issuer.token("alice", jti="2"))
        wait_for(lambda: not _fails(lambda: c.get("/p"), Exception), timeout=10, what="recovery")
    f = tmp_path / "token"
    f.write_text(issuer.token("alice") + "\n")
    with Client(server.address, auth_token_file=f) as c:
        c.put("/f", b"1")


def _fails(fn: Any, exc: type[BaseException]) -> bool:
    try:
        fn()
    except exc:
        return True
    return False


def test_a_stream_ends_when_its_token_expires(
    server: ServerThread, issuer: Issuer, channel: grpc.Channel
) -> None:
    exp = time.time() + 3
    token = issuer.token("alice", exp=int(exp) + 1)
    deadline = int(exp) + 1
    mc: Any = channel.stream_stream(
        SERVICE + "WriteStream", request_serializer=None, response_deserializer=None
    )
    import queue

    q: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (m := q.get()) is not None:
            yield m

    stream = mc(
        requests(),
        metadata=[("authorization", f"Bearer {token}"), ("shard-id", "0")],
        timeout=30,
    )
    w = pb.WriteRequest(shard=0, puts=[pb.PutRequest(key="/s", value=b"1")]).SerializeToString()
    q.put(w)
    first = pb.WriteResponse.FromString(next(stream))
    assert first.puts[0].status == pb.OK
    wait_for(lambda: time.time() > deadline, timeout=10, what="the token to expire")
    q.put(pb.WriteRequest(shard=0, puts=[pb.PutRequest(key="/s2", value=b"1")]).SerializeToString())
    with pytest.raises(grpc.RpcError) as ei:
        next(stream)
    assert ei.value.code() == UNAUTH  # type: ignore[attr-defined]
    assert "expired" in (ei.value.details() or "")  # type: ignore[attr-defined]
    q.put(None)
    with (
        Client(server.address, auth_token=issuer.token("alice")) as c,
        pytest.raises(KeyNotFound),
    ):
        c.get("/s2")  # the refused message was not applied


def test_a_notifications_stream_ends_when_its_token_expires(
    server: ServerThread, issuer: Issuer, channel: grpc.Channel
) -> None:
    """GetNotifications sends with ``context.write`` (to bound a send's wait): its messages
    are checked against the token's expiry as a generator handler's are."""
    exp = time.time() + 3
    deadline = int(exp) + 1
    token = issuer.token("alice", exp=deadline)
    mc: Any = channel.unary_stream(
        SERVICE + "GetNotifications",
        request_serializer=pb.NotificationsRequest.SerializeToString,
        response_deserializer=pb.NotificationBatch.FromString,
    )
    stream = mc(
        pb.NotificationsRequest(shard=0),
        metadata=[("authorization", f"Bearer {token}")],
        timeout=30,
    )
    first = next(stream)  # where "now" is
    write: Any = channel.unary_unary(
        SERVICE + "Write",
        request_serializer=pb.WriteRequest.SerializeToString,
        response_deserializer=pb.WriteResponse.FromString,
    )

    def put(key: str) -> None:
        req = pb.WriteRequest(shard=0, puts=[pb.PutRequest(key=key, value=b"1")])
        fresh = [("authorization", f"Bearer {issuer.token('alice')}")]
        assert write(req, metadata=fresh, timeout=10).puts[0].status == pb.OK

    put("/n1")
    assert next(stream).offset > first.offset
    wait_for(lambda: time.time() > deadline, timeout=10, what="the token to expire")
    put("/n2")
    with pytest.raises(grpc.RpcError) as ei:
        next(stream)
    assert ei.value.code() == UNAUTH  # type: ignore[attr-defined]
    assert "expired" in (ei.value.details() or "")  # type: ignore[attr-defined]


# -- authorization --------------------------------------------------------------------------------


@pytest.fixture
def policy_server(tmp_path: Path, issuer: Issuer) -> Iterator[ServerThread]:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    s = _server(tmp_path / "srv", issuer, policy_file=p)
    try:
        yield s
    finally:
        s.close()


def test_the_namespace_policy_allows_and_denies(
    policy_server: ServerThread, issuer: Issuer
) -> None:
    a = policy_server.address
    with Client(a, auth_token=issuer.token("alice")) as c:
        c.put("/x", b"1")
        assert c.get("/x").value == b"1"
    with pytest.raises(PermissionDenied, match="has no access to namespace 'other'"):
        Client(a, namespace="other", auth_token=issuer.token("alice"))
    with Client(a, namespace="other", auth_token=issuer.token("bob")) as c:
        assert c.list("", "~") == []
        with pytest.raises(PermissionDenied, match="user 'bob' may not write namespace 'other'"):
            c.put("/y", b"1")
    with pytest.raises(PermissionDenied):
        Client(a, auth_token=issuer.token("bob"))  # bob has nothing in default
    with Client(a, namespace="other", auth_token=issuer.token("carol", groups=["ops"])) as c:
        c.put("/y", b"1")
    with pytest.raises(PermissionDenied):
        Client(a, auth_token=issuer.token("carol", groups=["dev"]))
    with grpc.insecure_channel(a) as ch:
        # no namespace named: only those the caller has a grant in
        it: Any = ch.unary_stream(
            SERVICE + "GetShardAssignments", request_serializer=None, response_deserializer=None
        )(b"", metadata=[("authorization", f"Bearer {issuer.token('bob')}")], timeout=10)
        first = pb.ShardAssignments.FromString(next(it))
        it.cancel()
        assert set(first.namespaces) == {"other"}
    with TsoClient(a, auth_token=issuer.token("alice")) as tso:
        assert tso.get_ts() > 0
    with TsoClient(a, auth_token=issuer.token("bob")) as tso, pytest.raises(PermissionDenied):
        tso.get_ts()


def _put_override(version: int | None = None, mods: int | None = None, key: str = "/o") -> bytes:
    p = pb.PutRequest(key=key, value=b"forged")
    if version is not None:
        p.override_version_id = version
    if mods is not None:
        p.override_modifications_count = mods
    return pb.WriteRequest(shard=0, puts=[p]).SerializeToString()


def test_overrides_and_internal_keys_follow_the_policy(
    policy_server: ServerThread, issuer: Issuer
) -> None:
    alice, ops = issuer.token("alice"), issuer.token("carol", groups="ops")
    with grpc.insecure_channel(policy_server.address) as ch:
        for t in (alice, ops):
            for bad in (_put_override(-1), _put_override(None, -5)):
                assert (
                    code_of(lambda b=bad, t=t: call(ch, "Write", b, kind="unary_unary", token=t))
                    == INVALID
                )
        e = error_of(lambda: call(ch, "Write", _put_override(7), kind="unary_unary", token=alice))
        assert e.code() == DENIED  # type: ignore[attr-defined]
        assert "override_version_id" in (e.details() or "")  # type: ignore[attr-defined]
        r = call(ch, "Write", _put_override(7, 3), kind="unary_unary", token=ops)
        put = pb.WriteResponse.FromString(r[0]).puts[0]
        assert put.status == pb.OK and put.version.version_id == 7
        assert put.version.modifications_count == 3
        scan = pb.ListRequest(
            shard=0, start_inclusive="", end_exclusive="~~~~", include_internal_keys=True
        )
        assert code_of(lambda: call(ch, "List", scan, token=alice)) == DENIED
        rs = pb.RangeScanRequest(
            shard=0, start_inclusive="", end_exclusive="~", include_internal_keys=True
        )
        assert code_of(lambda: call(ch, "RangeScan", rs, token=alice)) == DENIED
        call(ch, "List", scan, token=ops)
        call(ch, "RangeScan", rs, token=ops)
        # WriteStream: the earlier write is answered, the privileged one ends the stream
        mc: Any = ch.stream_stream(
            SERVICE + "WriteStream", request_serializer=None, response_deserializer=None
        )
        plain = pb.WriteRequest(
            shard=0, puts=[pb.PutRequest(key="/w", value=b"1")]
        ).SerializeToString()
        stream = mc(
            iter([plain, _put_override(9)]),
            metadata=[("authorization", f"Bearer {alice}"), ("shard-id", "0")],
            timeout=10,
        )
        assert pb.WriteResponse.FromString(next(stream)).puts[0].status == pb.OK
        with pytest.raises(grpc.RpcError) as ei:
            next(stream)
        assert ei.value.code() == DENIED  # type: ignore[attr-defined]


# -- without authentication -----------------------------------------------------------------------


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_without_auth_overrides_are_refused_unless_the_flag_is_given(
    open_server: ServerThread, tmp_path: Path
) -> None:
    with grpc.insecure_channel(open_server.address) as ch:
        # The forgery: overwrite reusing a version id, then a stale CAS succeeds.
        r = pb.WriteResponse.FromString(
            call(
                ch,
                "Write",
                pb.WriteRequest(shard=0, puts=[pb.PutRequest(key="/o", value=b"v")]),
                kind="unary_unary",
            )[0]
        )
        vid = r.puts[0].version.version_id
        e = error_of(lambda: call(ch, "Write", _put_override(vid), kind="unary_unary"))
        assert e.code() == DENIED  # type: ignore[attr-defined]
        assert "--allow-migration-fields" in (e.details() or "")  # type: ignore[attr-defined]
        assert code_of(lambda: call(ch, "Write", _put_override(-1), kind="unary_unary")) == INVALID
        scan = pb.ListRequest(
            shard=0, start_inclusive="", end_exclusive="~", include_internal_keys=True
        )
        assert code_of(lambda: call(ch, "List", scan)) == DENIED
        call(ch, "List", pb.ListRequest(shard=0, start_inclusive="", end_exclusive="~"))
    flagged = ServerThread(
        tmp_path / "flagged", auth=PublicAuthOptions(allow_migration_fields=True)
    )
    try:
        with grpc.insecure_channel(flagged.address) as ch:
            r = pb.WriteResponse.FromString(
                call(ch, "Write", _put_override(42, 5), kind="unary_unary")[0]
            )
            assert r.puts[0].version.version_id == 42
            assert (
                code_of(lambda: call(ch, "Write", _put_override(-1), kind="unary_unary")) == INVALID
            )
            scan = pb.ListRequest(
                shard=0, start_inclusive="", end_exclusive="~", include_internal_keys=True
            )
            call(ch, "List", scan)
    finally:
        flagged.close()


GARBAGE = [b"\x0a\xff\x01", b"\xff\xff\xff\xff", b"\x08"]


def test_malformed_requests_are_invalid_argument_and_the_server_keeps_serving(
    open_server: ServerThread,
) -> None:
    kinds = {
        "GetShardAssignments": "unary_stream",
        "Write": "unary_unary",
        "WriteStream": "stream_stream",
        "Read": "unary_stream",
        "List": "unary_stream",
        "RangeScan": "unary_stream",
        "GetSequenceUpdates": "unary_stream",
        "GetNotifications": "unary_stream",
        "CreateSession": "unary_unary",
        "KeepAlive": "unary_unary",
        "CloseSession": "unary_unary",
    }
    service = OxiaClientService(
        open_server.node.server.director, open_server.node.server.assignments
    )
    assert set(kinds) == set(service.method_handlers())
    with grpc.insecure_channel(open_server.address) as ch:
        for service in SERVICE_NAMES:
            for name, kind in kinds.items():
                for g in GARBAGE:
                    md = [("shard-id", "0")] if name == "WriteStream" else []
                    e = error_of(
                        lambda s=service, n=name, k=kind, g=g, md=md: call(
                            ch, f"/{s}/{n}", g, kind=k, metadata=md, timeout=5
                        )
                    )
                    assert e.code() == INVALID, (name, g, e)  # type: ignore[attr-defined]
                    assert "undecodable" in (e.details() or "") or "bad write request" in (
                        e.details() or ""
                    ), (name, e.details())  # type: ignore[attr-defined]
        for g in GARBAGE:
            e = error_of(
                lambda g=g: call(ch, "/tsoracle.v1.TsoService/GetTs", g, kind="unary_unary")
            )
            assert e.code() == INVALID  # type: ignore[attr-defined]
        r = call(
            ch, "/tsoracle.v1.TsoService/GetTs", tso_pb2.GetTsRequest(count=1), kind="unary_unary"
        )
        assert tso_pb2.GetTsResponse.FromString(r[0]).count == 1
    with Client(open_server.address) as c:
        c.put("/still", b"serving")
        assert c.get("/still").value == b"serving"


def test_static_key_file_issuer(tmp_path: Path) -> None:
    key = SigningKey("ES256")
    pem = tmp_path / "keys.pem"
    pem.write_bytes(key.public_pem())
    iss = "https://static.example"
    params = json.dumps(
        {
            "issuers": {
                iss: {
                    "allowedAudiences": "oxia,other",
                    "userNameClaim": "email",
                    "staticKeyFile": str(pem),
                }
            }
        }
    )
    s = ServerThread(
        tmp_path / "srv", auth=PublicAuthOptions(provider="oidc", provider_params=params)
    )
    try:
        now = int(time.time())
        claims = {"iss": iss, "aud": ["x", "other"], "email": "e@x", "exp": now + 60}
        good = jwt.encode(claims, key.private, algorithm="ES256")
        with Client(s.address, auth_token=good) as c:
            c.put("/e", b"1")
        wrong = SigningKey("ES256")
        with grpc.insecure_channel(s.address) as ch:
            bad = jwt.encode(claims, wrong.private, algorithm="ES256")
            assert code_of(lambda: call(ch, "Read", read_req(), token=bad)) == UNAUTH
    finally:
        s.close()


def test_the_client_moves_its_streams_to_a_refreshed_token(
    server: ServerThread, issuer: Issuer
) -> None:
    short_exp = int(time.time()) + 3
    tokens = [issuer.token("alice", exp=short_exp)]
    with Client(server.address, auth_token_provider=lambda: tokens[-1]) as c:
        c.put("/rot", b"1")  # the write stream opens with the short-lived token
        tokens.append(issuer.token("alice", jti="long"))
        wait_for(
            lambda: time.time() > short_exp + 0.5, timeout=10, what="the first token to expire"
        )
        for i in range(5):
            c.put("/rot", str(i).encode())  # no error: new streams carry the new token
        assert c.get("/rot").value == b"4"
