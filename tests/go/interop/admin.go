// Admin mode: `interop admin <admin-addr> <service-addr> <public> <internal>` drives pyxia's
// coordinator with Oxia's own Go admin client (oxia.NewAdminClient, the package behind
// `oxia admin`): a namespace and a data server are created, read, listed, patched and deleted,
// the new namespace takes writes through Oxia's Go data client (at <service-addr>), and bad
// requests come back with their gRPC codes. <public>/<internal> are the addresses of a running
// data server that the coordinator does not know yet. The last stdout line is "ADMIN OK".
//
// INTEROP_TLS_CA=<PEM> dials the admin port with TLS trusting that CA; INTEROP_TLS_CERT and
// INTEROP_TLS_KEY add a client certificate (mutual TLS). INTEROP_EXPECT_UNAUTHENTICATED=1 only
// checks that a change is refused as unauthenticated while reads still work ("REFUSED OK").
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/oxia-db/oxia/common/proto"
	"github.com/oxia-db/oxia/oxia"
)

const adminNamespace = "go-admin"
const adminDataServer = "go-admin-ds"

func adminTLS() *tls.Config {
	ca := os.Getenv("INTEROP_TLS_CA")
	if ca == "" {
		return nil
	}
	pem, err := os.ReadFile(ca)
	check(err, "read CA file")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no certificate in %s", ca)
	}
	conf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if cert := os.Getenv("INTEROP_TLS_CERT"); cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, os.Getenv("INTEROP_TLS_KEY"))
		check(err, "load client certificate")
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf
}

// expectCode fails unless err is a gRPC status with the given code.
func expectCode(err error, want codes.Code, what string) {
	if err == nil {
		fail("%s: succeeded, expected %s", what, want)
	}
	if got := status.Code(err); got != want {
		fail("%s: expected %s, got %s (%v)", what, want, got, err)
	}
}

// eventually retries cond every 100 ms until it holds or 60 s pass.
func eventually(what string, cond func() (bool, error)) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			fail("%s: not reached in 60 s (last error: %v)", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runAdmin(args []string) {
	if len(args) != 4 {
		fail("usage: interop admin <admin-addr> <service-addr> <public> <internal>")
	}
	adminAddr, serviceAddr, public, internal := args[0], args[1], args[2], args[3]
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()

	admin, err := oxia.NewAdminClient(adminAddr, adminTLS(), nil)
	check(err, "admin client")
	defer admin.Close()

	if os.Getenv("INTEROP_EXPECT_UNAUTHENTICATED") != "" {
		_, err := admin.CreateNamespace(ctx, &proto.Namespace{
			Name: "refused", InitialShardCount: 1, ReplicationFactor: 1, KeySorting: "natural"})
		if !errors.Is(err, oxia.ErrUnauthenticated) {
			fail("expected an unauthenticated refusal, got %v", err)
		}
		_, err = admin.GetNamespace(ctx, "refused")
		expectCode(err, codes.NotFound, "the refused namespace")
		views, err := admin.ListNamespaces(ctx)
		check(err, "list namespaces (reads stay open)")
		if len(views) == 0 {
			fail("no namespace listed")
		}
		fmt.Println("REFUSED OK")
		return
	}

	// -- namespaces --------------------------------------------------------------------------
	before, err := admin.ListNamespaces(ctx)
	check(err, "list namespaces")
	notifications := true
	created, err := admin.CreateNamespace(ctx, &proto.Namespace{
		Name: adminNamespace, InitialShardCount: 2, ReplicationFactor: 2,
		NotificationsEnabled: &notifications, KeySorting: "natural"})
	check(err, "create namespace")
	if created.GetName() != adminNamespace || created.GetInitialShardCount() != 2 ||
		created.GetReplicationFactor() != 2 || created.GetKeySorting() != "natural" {
		fail("created namespace: %v", created)
	}
	_, err = admin.CreateNamespace(ctx, &proto.Namespace{
		Name: adminNamespace, InitialShardCount: 1, ReplicationFactor: 1, KeySorting: "natural"})
	expectCode(err, codes.AlreadyExists, "create the namespace again")
	_, err = admin.CreateNamespace(ctx, &proto.Namespace{
		Name: "bad/name", InitialShardCount: 1, ReplicationFactor: 1, KeySorting: "natural"})
	expectCode(err, codes.InvalidArgument, "create a namespace with a bad name")
	_, err = admin.CreateNamespace(ctx, &proto.Namespace{
		Name: "no-sorting", InitialShardCount: 1, ReplicationFactor: 1})
	expectCode(err, codes.InvalidArgument, "create a namespace without a key sorting (as Oxia)")
	_, err = admin.CreateNamespace(ctx, &proto.Namespace{
		Name: "too-wide", InitialShardCount: 1, ReplicationFactor: 9, KeySorting: "natural"})
	expectCode(err, codes.FailedPrecondition, "create a namespace with RF 9 on 3 data servers")

	var shards map[int64]*proto.ShardMetadata
	eventually("the new namespace's shards elected", func() (bool, error) {
		view, err := admin.GetNamespace(ctx, adminNamespace)
		if err != nil {
			return false, err
		}
		shards = view.GetNamespaceStatus().GetShards()
		if len(shards) != 2 {
			return false, fmt.Errorf("%d shards", len(shards))
		}
		for id, s := range shards {
			if s.GetStatus() != proto.ShardStatus_SteadyState || s.GetLeader() == nil {
				return false, fmt.Errorf("shard %d is %s", id, s.GetStatus())
			}
		}
		return true, nil
	})
	after, err := admin.ListNamespaces(ctx)
	check(err, "list namespaces")
	var names []string
	for _, v := range after {
		names = append(names, v.GetNamespace().GetName())
	}
	if len(after) != len(before)+1 || !slices.Contains(names, adminNamespace) {
		fail("namespaces listed after the create: %v", names)
	}

	// The namespace serves Oxia's Go data client.
	client, err := oxia.NewSyncClient(serviceAddr, oxia.WithNamespace(adminNamespace),
		oxia.WithRequestTimeout(10*time.Second))
	check(err, "data client on the new namespace")
	_, _, err = client.Put(ctx, "/admin-made", []byte("yes"))
	check(err, "put in the new namespace")
	_, value, _, err := client.Get(ctx, "/admin-made")
	check(err, "get in the new namespace")
	if string(value) != "yes" {
		fail("get returned %q", value)
	}
	check(client.Close(), "close the data client")

	off := false
	patched, err := admin.PatchNamespace(ctx, &proto.Namespace{
		Name: adminNamespace, NotificationsEnabled: &off})
	check(err, "patch namespace")
	if patched.GetNotificationsEnabled() || patched.GetReplicationFactor() != 2 {
		fail("patched namespace: %v", patched)
	}
	_, err = admin.PatchNamespace(ctx, &proto.Namespace{Name: adminNamespace, KeySorting: "natural"})
	expectCode(err, codes.InvalidArgument, "patch the key sorting")
	_, err = admin.PatchNamespace(ctx, &proto.Namespace{Name: "nope", ReplicationFactor: 1})
	expectCode(err, codes.NotFound, "patch an unknown namespace")
	_, err = admin.GetNamespace(ctx, "nope")
	expectCode(err, codes.NotFound, "get an unknown namespace")

	// -- shard split: validated at the boundary; done if this coordinator can split ------------
	ids := slices.Sorted(maps.Keys(shards))
	first := shards[ids[0]]
	outside := first.GetInt32HashRange().GetMax() + 1
	expectCode(admin.SplitShard(ctx, adminNamespace, 999_999, nil).Error, codes.NotFound,
		"split an unknown shard")
	expectCode(admin.SplitShard(ctx, "nope", ids[0], nil).Error, codes.NotFound,
		"split in an unknown namespace")
	expectCode(admin.SplitShard(ctx, adminNamespace, ids[0], &outside).Error, codes.InvalidArgument,
		"split outside the shard's hash range")
	split := admin.SplitShard(ctx, adminNamespace, ids[0], nil)
	switch {
	case status.Code(split.Error) == codes.Unimplemented:
		fmt.Println("split: unimplemented")
	case split.Error != nil:
		fail("split: %v", split.Error)
	default:
		if split.LeftChildShardId == split.RightChildShardId || split.LeftChildShardId <= ids[len(ids)-1] {
			fail("split children %d and %d", split.LeftChildShardId, split.RightChildShardId)
		}
		fmt.Printf("split: children %d %d\n", split.LeftChildShardId, split.RightChildShardId)
	}

	// A namespace with a split in progress is refused (FAILED_PRECONDITION) until the split
	// ended: retry until then.
	deadline := time.Now().Add(60 * time.Second)
	deleted, err := admin.DeleteNamespace(ctx, adminNamespace)
	for status.Code(err) == codes.FailedPrecondition && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		deleted, err = admin.DeleteNamespace(ctx, adminNamespace)
	}
	check(err, "delete namespace")
	if deleted.GetName() != adminNamespace {
		fail("deleted namespace: %v", deleted)
	}
	_, err = admin.GetNamespace(ctx, adminNamespace)
	expectCode(err, codes.NotFound, "get the deleted namespace")
	_, err = admin.DeleteNamespace(ctx, adminNamespace)
	expectCode(err, codes.NotFound, "delete the namespace again")

	// -- data servers ------------------------------------------------------------------------
	servers, err := admin.ListDataServers(ctx)
	check(err, "list data servers")
	name := adminDataServer
	ds, err := admin.CreateDataServer(ctx, &proto.DataServer{
		Identity: &proto.DataServerIdentity{Name: &name, Public: public, Internal: internal},
		Metadata: &proto.DataServerMetadata{Labels: map[string]string{"zone": "z1"}}})
	check(err, "create data server")
	if ds.GetIdentity().GetName() != name || ds.GetIdentity().GetInternal() != internal ||
		ds.GetMetadata().GetLabels()["zone"] != "z1" {
		fail("created data server: %v", ds)
	}
	_, err = admin.CreateDataServer(ctx, &proto.DataServer{
		Identity: &proto.DataServerIdentity{Name: &name, Public: public, Internal: internal}})
	expectCode(err, codes.AlreadyExists, "create the data server again")
	bad := "bad-address"
	_, err = admin.CreateDataServer(ctx, &proto.DataServer{
		Identity: &proto.DataServerIdentity{Name: &bad, Public: "no-port", Internal: "x:1"}})
	expectCode(err, codes.InvalidArgument, "create a data server with a bad address")
	eventually("the new data server running", func() (bool, error) {
		view, err := admin.GetDataServer(ctx, name)
		if err != nil {
			return false, err
		}
		state := view.GetDataServerStatus().GetState()
		return state == proto.DataServerState_DATA_SERVER_STATE_RUNNING, fmt.Errorf("state %s", state)
	})
	listed, err := admin.ListDataServers(ctx)
	check(err, "list data servers")
	if len(listed) != len(servers)+1 || listed[len(listed)-1].GetDataServer().GetIdentity().GetName() != name {
		fail("data servers listed after the create: %v", listed)
	}
	patchedDs, err := admin.PatchDataServer(ctx, &proto.DataServer{
		Identity: &proto.DataServerIdentity{Name: &name},
		Metadata: &proto.DataServerMetadata{Labels: map[string]string{"zone": "z2"}}})
	check(err, "patch data server")
	if patchedDs.GetMetadata().GetLabels()["zone"] != "z2" || patchedDs.GetIdentity().GetPublic() != public {
		fail("patched data server: %v", patchedDs)
	}
	view, err := admin.GetDataServer(ctx, name)
	check(err, "get data server")
	if view.GetDataServer().GetMetadata().GetLabels()["zone"] != "z2" {
		fail("data server after the patch: %v", view)
	}
	nope := "nope"
	_, err = admin.PatchDataServer(ctx, &proto.DataServer{Identity: &proto.DataServerIdentity{Name: &nope}})
	expectCode(err, codes.NotFound, "patch an unknown data server")
	deletedDs, err := admin.DeleteDataServer(ctx, name)
	check(err, "delete data server")
	if deletedDs.GetIdentity().GetName() != name {
		fail("deleted data server: %v", deletedDs)
	}
	_, err = admin.GetDataServer(ctx, name)
	expectCode(err, codes.NotFound, "get the deleted data server")
	_, err = admin.DeleteDataServer(ctx, name)
	expectCode(err, codes.NotFound, "delete the data server again")
	fmt.Println("ADMIN OK")
}
