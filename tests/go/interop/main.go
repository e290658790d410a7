// Interoperability check: Oxia's own Go client (github.com/oxia-db/oxia/oxia)
// against a pyxia server. Exits non-zero with a message on the first failure.
//
// INTEROP_TLS_CA=<PEM file> connects with TLS (oxia.WithTLS) trusting that CA;
// INTEROP_AUTH_TOKEN=<token> sends it as a bearer token (oxia.WithAuthentication);
// INTEROP_EXPECT_UNAUTHENTICATED=1 only checks that the server refuses the client.
//
// `interop load ...` is a write load instead (load.go); `interop admin ...` drives the
// coordinator's admin port with Oxia's Go admin client (admin.go).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/oxia-db/oxia/common/auth"
	"github.com/oxia-db/oxia/oxia"
)

func securityOptions() []oxia.ClientOption {
	var opts []oxia.ClientOption
	if ca := os.Getenv("INTEROP_TLS_CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		check(err, "read CA file")
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fail("no certificate in %s", ca)
		}
		opts = append(opts, oxia.WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	}
	if token := os.Getenv("INTEROP_AUTH_TOKEN"); token != "" {
		opts = append(opts, oxia.WithAuthentication(auth.NewTokenAuthenticationWithToken(token, false)))
	}
	return opts
}

func fail(format string, args ...any) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

func check(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "load" {
		runLoad(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "admin" {
		runAdmin(os.Args[2:])
		return
	}
	addr, prefix := os.Args[1], os.Args[2]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	opts := append([]oxia.ClientOption{oxia.WithRequestTimeout(10 * time.Second),
		oxia.WithSessionTimeout(5 * time.Second)}, securityOptions()...)
	if os.Getenv("INTEROP_EXPECT_UNAUTHENTICATED") != "" {
		opts[0] = oxia.WithRequestTimeout(3 * time.Second)
		c, err := oxia.NewSyncClient(addr, opts...)
		if err == nil {
			_, _, err = c.Put(ctx, prefix+"/refused", []byte("x"))
			c.Close()
		}
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthenticated") {
			fail("expected an unauthenticated refusal, got %v", err)
		}
		fmt.Println("REFUSED OK")
		return
	}
	client, err := oxia.NewSyncClient(addr, opts...)
	check(err, "connect")
	defer client.Close()

	// Puts, versions, conditional writes.
	k := prefix + "/a"
	_, v1, err := client.Put(ctx, k, []byte("one"))
	check(err, "put")
	_, v2, err := client.Put(ctx, k, []byte("two"), oxia.ExpectedVersionId(v1.VersionId))
	check(err, "conditional put")
	if v2.VersionId <= v1.VersionId || v2.ModificationsCount != 1 {
		fail("versions: %+v then %+v", v1, v2)
	}
	_, _, err = client.Put(ctx, k, []byte("x"), oxia.ExpectedVersionId(v1.VersionId))
	if !errors.Is(err, oxia.ErrUnexpectedVersionId) {
		fail("stale expected version: %v", err)
	}
	_, _, err = client.Put(ctx, k, []byte("x"), oxia.ExpectedRecordNotExists())
	if !errors.Is(err, oxia.ErrUnexpectedVersionId) {
		fail("must-not-exist on an existing key: %v", err)
	}
	_, val, _, err := client.Get(ctx, k)
	check(err, "get")
	if string(val) != "two" {
		fail("get returned %q", val)
	}

	// Many keys spread over every shard (the Go client routes with xxh3).
	var want []string
	for i := 0; i < 50; i++ {
		key := fmt.Sprintf("%s/many/%03d", prefix, i)
		want = append(want, key)
		_, _, err := client.Put(ctx, key, []byte(key))
		check(err, "put many")
	}
	keys, err := client.List(ctx, prefix+"/many/", prefix+"/many//")
	check(err, "list")
	slices.Sort(keys)
	if !slices.Equal(keys, want) {
		fail("list: got %d keys %v", len(keys), keys)
	}
	n := 0
	for r := range client.RangeScan(ctx, prefix+"/many/", prefix+"/many//") {
		check(r.Err, "range scan")
		if string(r.Value) != r.Key {
			fail("range scan value of %s: %q", r.Key, r.Value)
		}
		n++
	}
	if n != 50 {
		fail("range scan returned %d records", n)
	}

	// Comparisons on one shard (partition key).
	pk := oxia.PartitionKey(prefix + "-cmp")
	for _, s := range []string{"b", "d", "f"} {
		_, _, err := client.Put(ctx, prefix+"/cmp/"+s, []byte(s), pk)
		check(err, "put cmp")
	}
	got, _, _, err := client.Get(ctx, prefix+"/cmp/c", pk, oxia.ComparisonFloor())
	check(err, "floor")
	if got != prefix+"/cmp/b" {
		fail("floor: %s", got)
	}
	got, _, _, err = client.Get(ctx, prefix+"/cmp/d", pk, oxia.ComparisonHigher())
	check(err, "higher")
	if got != prefix+"/cmp/f" {
		fail("higher: %s", got)
	}

	// Delete and delete-range.
	check(client.Delete(ctx, k), "delete")
	if _, _, _, err = client.Get(ctx, k); !errors.Is(err, oxia.ErrKeyNotFound) {
		fail("get after delete: %v", err)
	}
	check(client.DeleteRange(ctx, prefix+"/many/", prefix+"/many//"), "delete range")
	keys, err = client.List(ctx, prefix+"/many/", prefix+"/many//")
	check(err, "list after delete range")
	if len(keys) != 0 {
		fail("delete range left %v", keys)
	}

	// Ephemeral records and secondary indexes.
	_, ev, err := client.Put(ctx, prefix+"/eph", []byte("e"), oxia.Ephemeral())
	check(err, "ephemeral put")
	if !ev.Ephemeral || ev.SessionId < 0 {
		fail("ephemeral version: %+v", ev)
	}
	_, _, err = client.Put(ctx, prefix+"/idx", []byte("i"), oxia.SecondaryIndex("color", "red"))
	check(err, "indexed put")
	ikeys, err := client.List(ctx, "red", "ree", oxia.UseIndex("color"))
	check(err, "index list")
	if !slices.Contains(ikeys, prefix+"/idx") {
		fail("index list: %v", ikeys)
	}

	// Sequential keys.
	seqPk := oxia.PartitionKey(prefix + "-seq")
	sk, _, err := client.Put(ctx, prefix+"/seq", []byte("s"), seqPk, oxia.SequenceKeysDeltas(3))
	check(err, "sequence put")
	if sk != fmt.Sprintf("%s/seq-%020d", prefix, 3) {
		fail("sequence key %s", sk)
	}

	// Notifications.
	notif, err := client.GetNotifications()
	check(err, "notifications")
	defer notif.Close()
	_, _, err = client.Put(ctx, prefix+"/notified", []byte("n"))
	check(err, "put for notification")
	timeout := time.After(20 * time.Second)
	for done := false; !done; {
		select {
		case nt := <-notif.Ch():
			if nt.Key == prefix+"/notified" && nt.Type == oxia.KeyCreated {
				done = true
			}
		case <-timeout:
			fail("no notification")
		}
	}
	fmt.Println("OK")
}
