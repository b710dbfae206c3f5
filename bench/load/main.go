// Command cyload is the benchmark suite's load generator and helpers:
//
//	cyload gen     -addr HOST:PORT ...  Sidecar/Generate at a fixed concurrency
//	cyload floor   -socket PATH ...     the same generations straight off a worker
//	cyload billing -listen HOST:PORT    a billing endpoint that accepts everything
//	cyload relay   -socket PATH ...     a bare gRPC relay to a worker (the relay floor)
//
// gen and floor print one JSON object (counts, rates, token latency when
// -stamp is given, and their own CPU) on stdout; gen with -request-latency
// adds each request's latency to its final status, the gRPC statuses
// received and how many failures carried a retry pushback. Every run is
// bounded in time (-duration) and in count (-max-requests).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: cyload gen|floor|billing|relay [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var out any
	switch os.Args[1] {
	case "gen":
		addr := fs.String("addr", "127.0.0.1:50051", "gRPC address")
		conns := fs.Int("conns", 1, "HTTP/2 connections")
		ramp := fs.Duration("ramp", 0, "start the streams spread over this long")
		maxTokens := fs.Uint("max-tokens", 0, "sampling.max_tokens (0: the worker's choice)")
		reqLat := fs.Bool("request-latency", false,
			"time each request from send to final status; count gRPC statuses and retry pushbacks")
		l := loadFlags(fs)
		fs.Parse(os.Args[2:])
		l.maxTokens = uint32(*maxTokens)
		l.requestLatency = *reqLat
		out = runGen(*l, *addr, max(*conns, 1), *ramp)
	case "floor":
		socket := fs.String("socket", "/tmp/cy_worker.sock", "worker socket")
		maxTokens := fs.Uint("max-tokens", 0, "sampling.max_tokens (0: the worker's choice)")
		l := loadFlags(fs)
		fs.Parse(os.Args[2:])
		l.maxTokens = uint32(*maxTokens)
		r, err := runFloor(*l, *socket)
		if err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
		out = r
	case "billing":
		listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
		lifetime := fs.Duration("lifetime", 2*time.Hour, "exit after this long at the latest")
		fs.Parse(os.Args[2:])
		if err := runBilling(*listen, *lifetime); err != nil {
			fmt.Fprintln(os.Stderr, "billing:", err)
			os.Exit(1)
		}
		return
	case "relay":
		socket := fs.String("socket", "/tmp/cy_worker.sock", "worker socket")
		listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
		fs.Parse(os.Args[2:])
		if err := runRelay(*listen, *socket); err != nil {
			fmt.Fprintln(os.Stderr, "relay:", err)
			os.Exit(1)
		}
		return
	default:
		fmt.Fprintln(os.Stderr, "usage: cyload gen|floor|billing|relay [flags]")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(out); err != nil {
		os.Exit(1)
	}
}

func loadFlags(fs *flag.FlagSet) *load {
	l := &load{}
	fs.IntVar(&l.streams, "streams", 1, "generations kept in flight")
	fs.DurationVar(&l.duration, "duration", 5*time.Second, "run time, warm-up included")
	fs.DurationVar(&l.warmup, "warmup", time.Second, "time not counted at the start")
	fs.Int64Var(&l.maxRequests, "max-requests", 10_000_000, "most generations started")
	fs.StringVar(&l.prompt, "prompt", "hello", "prompt of every generation")
	fs.StringVar(&l.session, "session", "bench", "session_id of every generation")
	fs.StringVar(&l.prefix, "prefix", "b", "request id prefix")
	fs.BoolVar(&l.stamp, "stamp", false, "read a CLOCK_MONOTONIC stamp from each chunk's text")
	return l
}
