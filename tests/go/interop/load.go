// Load mode: `interop load <addr> <prefix> <max-seconds> <acks-file>` writes continuously
// through Oxia's Go client until SIGINT/SIGTERM (or max-seconds), retrying exactly as the
// client does on its own (constant.IsRetryable) and nothing more. Every key is written once:
// half of the puts are conditional (ExpectedRecordNotExists), so a write applied twice shows
// up as a failed operation. Each acknowledged write is appended to the acks file as
// "<key> <version id>"; the last stdout line is a JSON summary
// {"ok": N, "failed": M, "errors": {"<error>": count}}.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oxia-db/oxia/oxia"
)

const loadWorkers = 32

func runLoad(args []string) {
	if len(args) != 4 {
		fail("usage: interop load <addr> <prefix> <max-seconds> <acks-file>")
	}
	addr, prefix, ackPath := args[0], args[1], args[3]
	maxSeconds, err := strconv.Atoi(args[2])
	check(err, "max-seconds")

	client, err := oxia.NewSyncClient(addr, oxia.WithRequestTimeout(30*time.Second))
	check(err, "connect")
	defer client.Close()

	f, err := os.Create(ackPath)
	check(err, "acks file")
	defer f.Close()
	acks := bufio.NewWriter(f)
	var mu sync.Mutex
	errs := map[string]int{}
	var ok, failed atomic.Int64

	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(maxSeconds)*time.Second)
	defer cancel()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < loadWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("%s/w%02d-%08d", prefix, w, i)
				var opts []oxia.PutOption
				if i%2 == 0 {
					opts = append(opts, oxia.ExpectedRecordNotExists())
				}
				// Each operation gets its own deadline: stopping the load must not fail
				// the writes already sent.
				opCtx, opCancel := context.WithTimeout(context.Background(), 60*time.Second)
				_, v, err := client.Put(opCtx, key, []byte(key), opts...)
				opCancel()
				mu.Lock()
				if err != nil {
					failed.Add(1)
					errs[err.Error()]++
				} else {
					ok.Add(1)
					fmt.Fprintf(acks, "%s %d\n", key, v.VersionId)
					if ok.Load()%200 == 0 {
						_ = acks.Flush()
					}
				}
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	check(acks.Flush(), "flush acks")
	out, _ := json.Marshal(map[string]any{"ok": ok.Load(), "failed": failed.Load(), "errors": errs})
	fmt.Println(string(out))
}
