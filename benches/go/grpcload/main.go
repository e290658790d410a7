// grpcload drives one unary gRPC method with pre-encoded request bytes from
// many concurrent callers and prints JSON figures. It measures what a server
// sustains when the load generator costs little CPU (a Python load generator
// takes one of this machine's two cores for itself).
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
)

// rawCodec sends and receives message bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

type result struct {
	Calls     int     `json:"calls"`
	Errors    int     `json:"errors"`
	Seconds   float64 `json:"seconds"`
	CallsPerS float64 `json:"calls_per_s"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:6648", "server address")
	method := flag.String("method", "", "full method, /package.Service/Method")
	reqHex := flag.String("request", "", "request message, hex-encoded protobuf")
	callers := flag.Int("callers", 16, "concurrent callers")
	conns := flag.Int("conns", 4, "connections the callers share")
	seconds := flag.Float64("seconds", 5, "duration")
	flag.Parse()
	req, err := hex.DecodeString(*reqHex)
	if err != nil || *method == "" {
		fmt.Fprintln(os.Stderr, "grpcload: -method and a hex -request are needed")
		os.Exit(2)
	}
	clients := make([]*grpc.ClientConn, *conns)
	for i := range clients {
		c, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			fmt.Fprintln(os.Stderr, "grpcload:", err)
			os.Exit(1)
		}
		defer c.Close()
		clients[i] = c
	}
	ctx := context.Background()
	// warm every connection
	for _, c := range clients {
		var out []byte
		if err := c.Invoke(ctx, *method, &req, &out); err != nil {
			fmt.Fprintln(os.Stderr, "grpcload: warm-up call failed:", err)
			os.Exit(1)
		}
	}
	deadline := time.Now().Add(time.Duration(*seconds * float64(time.Second)))
	var mu sync.Mutex
	var all []time.Duration
	errs := 0
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *callers; i++ {
		wg.Add(1)
		go func(c *grpc.ClientConn) {
			defer wg.Done()
			var lat []time.Duration
			e := 0
			for time.Now().Before(deadline) {
				var out []byte
				t0 := time.Now()
				if err := c.Invoke(ctx, *method, &req, &out); err != nil {
					e++
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			errs += e
			mu.Unlock()
		}(clients[i%len(clients)])
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := result{Calls: len(all), Errors: errs, Seconds: el}
	if len(all) > 0 {
		r.CallsPerS = float64(len(all)) / el
		r.P50Ms = float64(all[len(all)/2].Microseconds()) / 1000
		r.P99Ms = float64(all[len(all)*99/100].Microseconds()) / 1000
	}
	_ = json.NewEncoder(os.Stdout).Encode(r)
}
