"""Bad input gets a clear error (Oxia 0.17 form) and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from grpc_stubs import OxiaClientStub
from pyxia.proto import client_pb2
from servers import ServerProcess, standalone_args


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("errors")
    s = ServerProcess(standalone_args(base, "--shards", "2"), base).start()
    yield s
    s.kill()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[OxiaClientStub]:
    ch = grpc.insecure_channel(server.public, options=[("grpc.max_send_message_length", -1)])
    yield OxiaClientStub(ch)
    ch.close()


def error_info(e: grpc.RpcError) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    assert isinstance(e, grpc.Call)
    for k, v in e.trailing_metadata() or ():
        if k == "grpc-status-details-bin":
            st = status_pb2.Status.FromString(v)
            for d in st.details:
                info = error_details_pb2.ErrorInfo()
                if d.Unpack(info):
                    assert info.domain == "oxia.io"
                    return e.code(), info.reason, dict(info.metadata)
    return e.code(), "", {}


def still_serving(stub: OxiaClientStub) -> None:
    res = stub.Write(
        client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="/alive", value=b"1")])
    )
    assert res.puts[0].status == client_pb2.OK


def test_invalid_session_timeout(stub: OxiaClientStub) -> None:
    for t in (0, 1999, 300_001):
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateSession(client_pb2.CreateSessionRequest(shard=0, session_timeout_ms=t))
        code, reason, _ = error_info(err.value)
        assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SESSION_TIMEOUT")
        assert "between" in str(err.value.details())
    still_serving(stub)


def test_unknown_session(stub: OxiaClientStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.KeepAlive(client_pb2.SessionHeartbeat(shard=0, session_id=123456))
    assert error_info(err.value)[:2] == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as err:
        stub.CloseSession(client_pb2.CloseSessionRequest(shard=0, session_id=123456))
    assert error_info(err.value)[1] == "SESSION_NOT_FOUND"
    # an ephemeral put on an unknown session is a per-op status
    res = stub.Write(
        client_pb2.WriteRequest(
            shard=0, puts=[client_pb2.PutRequest(key="/e", value=b"", session_id=424242)]
        )
    )
    assert res.puts[0].status == client_pb2.SESSION_DOES_NOT_EXIST
    still_serving(stub)


def test_unknown_shard_and_namespace(stub: OxiaClientStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(client_pb2.WriteRequest(shard=99, puts=[client_pb2.PutRequest(key="/x")]))
    code, reason, md = error_info(err.value)
    assert (code, reason, md.get("shard")) == (grpc.StatusCode.NOT_FOUND, "SHARD_NOT_FOUND", "99")
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Read(client_pb2.ReadRequest(shard=99, gets=[client_pb2.GetRequest(key="/x")])))
    assert error_info(err.value)[1] == "SHARD_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as err:
        next(iter(stub.GetShardAssignments(client_pb2.ShardAssignmentsRequest(namespace="nope"))))
    assert error_info(err.value)[:2] == (grpc.StatusCode.NOT_FOUND, "NAMESPACE_NOT_FOUND")
    still_serving(stub)


def test_write_stream_without_headers(stub: OxiaClientStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.WriteStream(iter([client_pb2.WriteRequest(shard=0)])))
    assert error_info(err.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    # routed by the headers, several requests, responses in order
    reqs = [
        client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key=f"/ws{i}", value=b"v")])
        for i in range(5)
    ]
    out = list(stub.WriteStream(iter(reqs), metadata=(("namespace", "default"), ("shard-id", "1"))))
    assert [r.puts[0].status for r in out] == [client_pb2.OK] * 5
    versions = [r.puts[0].version.version_id for r in out]
    assert versions == sorted(versions)


def test_empty_keys_internal_keys_bad_indexes(stub: OxiaClientStub) -> None:
    bad = [
        client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="", value=b"x")]),
        client_pb2.WriteRequest(shard=0, deletes=[client_pb2.DeleteRequest(key="")]),
        client_pb2.WriteRequest(shard=0, puts=[client_pb2.PutRequest(key="__oxia/term")]),
        client_pb2.WriteRequest(
            shard=0,
            puts=[
                client_pb2.PutRequest(
                    key="/k", secondary_indexes=[client_pb2.SecondaryIndex(index_name="a/b")]
                )
            ],
        ),
    ]
    for req in bad:
        with pytest.raises(grpc.RpcError) as err:
            stub.Write(req)
        assert error_info(err.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    still_serving(stub)


def test_bad_sequence_deltas(stub: OxiaClientStub) -> None:
    def seq(deltas: list[int], pk: str | None = "pk") -> client_pb2.WriteRequest:
        p = client_pb2.PutRequest(key="/seq", value=b"", sequence_key_delta=deltas)
        if pk is not None:
            p.partition_key = pk
        return client_pb2.WriteRequest(shard=0, puts=[p])

    for req in (seq([0]), seq([1], pk=None)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Write(req)
        assert error_info(err.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    ok = stub.Write(seq([1, 1]))
    assert ok.puts[0].key == f"/seq-{1:020d}-{1:020d}"
    # fewer deltas than the sequence has parts: rejected when applied
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(seq([1]))
    assert error_info(err.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing some sequence deltas" in str(err.value.details())
    still_serving(stub)


def test_oversized_request(stub: OxiaClientStub) -> None:
    huge = client_pb2.WriteRequest(
        shard=0, puts=[client_pb2.PutRequest(key="/huge", value=b"x" * (65 * 1024 * 1024))]
    )
    with pytest.raises(grpc.RpcError) as err:
        stub.Write(huge)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(stub)


def test_health_and_readiness(server: ServerProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.public) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for svc in ("", "oxia-readiness"):
            r = h.Check(health_pb2.HealthCheckRequest(service=svc))
            assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_endpoint(server: ServerProcess, stub: OxiaClientStub) -> None:
    import urllib.request

    still_serving(stub)  # at least one write on shard 0
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics").read()
    text = body.decode()
    shard0 = 'oxia_namespace="default",shard="0"'
    assert f"oxia_server_leader_write_latency_milliseconds_count{{{shard0}}}" in text
    assert f"oxia_server_db_puts_total{{{shard0}}}" in text
    assert f"oxia_server_leader_commit_offset{{{shard0}}}" in text
    assert f"oxia_server_wal_entries{{{shard0}}}" in text


def test_write_stream_answers_bad_requests_per_operation(
    stub: OxiaClientStub,
) -> None:
    """An invalid request (or one rejected when applied) in the middle of a
    WriteStream is answered with per-op INVALID_ARGUMENT; the writes
    pipelined around it are applied and answered, the stream goes on."""

    def put(key: str, **kw: object) -> client_pb2.WriteRequest:
        return client_pb2.WriteRequest(puts=[client_pb2.PutRequest(key=key, value=b"v", **kw)])

    pk = {"partition_key": "p"}
    reqs = [
        put("/pipe/a"),
        put(""),  # invalid: empty key
        put("/pipe/seq", sequence_key_delta=[1, 1], **pk),
        put("/pipe/seq", sequence_key_delta=[1], **pk),  # rejected at apply: too few deltas
        client_pb2.WriteRequest(deletes=[client_pb2.DeleteRequest(key="__oxia/x")]),  # reserved
        put("/pipe/b"),
    ]
    out = list(stub.WriteStream(iter(reqs), metadata=(("namespace", "default"), ("shard-id", "0"))))
    bad = client_pb2.INVALID_ARGUMENT
    assert [r.puts[0].status if r.puts else r.deletes[0].status for r in out] == [
        client_pb2.OK,
        bad,
        client_pb2.OK,
        bad,
        bad,
        client_pb2.OK,
    ]
    got = next(
        iter(
            stub.Read(
                client_pb2.ReadRequest(
                    shard=0,
                    gets=[
                        client_pb2.GetRequest(key="/pipe/a"),
                        client_pb2.GetRequest(key="/pipe/b"),
                    ],
                )
            )
        )
    )
    assert [g.status for g in got.gets] == [client_pb2.OK, client_pb2.OK]
