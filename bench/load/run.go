package main

import (
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// load is one bounded run: `streams` generations kept in flight back to
// back, until `duration` has passed or `maxRequests` have started,
// whichever comes first. Only what happens inside the measurement window
// (after `warmup`) is counted.
type load struct {
	streams     int
	duration    time.Duration
	warmup      time.Duration
	maxRequests int64
	prompt      string
	maxTokens   uint32
	session     string
	prefix      string
	stamp       bool
	// requestLatency times every request from send to final status, and
	// counts the gRPC statuses and retry pushbacks received (gen only).
	requestLatency bool
}

// tally is what a run counts, shared by its goroutines.
type tally struct {
	windowStart int64 // CLOCK_MONOTONIC ns
	windowEnd   int64
	started     atomic.Int64
	ok          atomic.Int64
	tokens      atomic.Int64
	chunks      atomic.Int64
	mu          sync.Mutex
	failed      map[string]int64
	lat         recorder
	// With requestLatency: every finished request's latency, the failed
	// ones' alone, the gRPC statuses received (by name), how many failures
	// carried grpc-retry-pushback-ms, and the first failure's grpc-message.
	reqLat       recorder
	failLat      recorder
	statuses     map[string]int64
	pushbackSeen int64
	firstMessage string
}

func newTally(l load, startNs int64) *tally {
	return &tally{
		windowStart: startNs + l.warmup.Nanoseconds(),
		windowEnd:   startNs + l.duration.Nanoseconds(),
		failed:      map[string]int64{},
		statuses:    map[string]int64{},
	}
}

func (t *tally) inWindow(ns int64) bool { return ns >= t.windowStart && ns < t.windowEnd }

// takeTicket reserves one request against maxRequests.
func (t *tally) takeTicket(l load) bool { return t.started.Add(1) <= l.maxRequests }

func (t *tally) fail(kind string) {
	if !t.inWindow(monoNs()) {
		return
	}
	t.mu.Lock()
	t.failed[kind]++
	t.mu.Unlock()
}

// end counts how one gRPC request ended, if it ended inside the window.
func (t *tally) end(l load, e ending) {
	if e.kind == "" || !t.inWindow(e.endNs) {
		return
	}
	failed := e.kind != "ok"
	if failed {
		t.mu.Lock()
		t.failed[e.kind]++
		t.mu.Unlock()
	} else {
		t.ok.Add(1)
	}
	if !l.requestLatency {
		return
	}
	lat := []int64{e.endNs - e.sentNs}
	t.reqLat.add(lat)
	if failed {
		t.failLat.add(lat)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.status != "" {
		t.statuses[codeName(e.status)]++
	}
	if !failed {
		return
	}
	if _, err := strconv.ParseUint(e.md.Get("grpc-retry-pushback-ms"), 10, 63); err == nil {
		t.pushbackSeen++
	}
	if t.firstMessage == "" {
		t.firstMessage = grpcMessage(e.md)
	}
}

// result is what a run prints, as one JSON object.
type result struct {
	Mode         string           `json:"mode"`
	Streams      int              `json:"streams"`
	WindowS      float64          `json:"window_s"`
	Started      int64            `json:"requests_started"`
	OK           int64            `json:"requests_ok"`
	Failed       map[string]int64 `json:"requests_failed"`
	Tokens       int64            `json:"tokens"`
	Chunks       int64            `json:"chunks"`
	ReqPerS      float64          `json:"requests_per_s"`
	TokensPerS   float64          `json:"tokens_per_s"`
	Latency      *latency         `json:"latency_us,omitempty"`
	ClientCPUS   float64          `json:"client_cpu_s"`
	ClientCPUPct float64          `json:"client_cpu_pct"`
	FailedTop    []string         `json:"failed_kinds"`
	// With -request-latency (gen only).
	RequestLatency *latency         `json:"request_latency_us,omitempty"`
	FailedLatency  *latency         `json:"failed_latency_us,omitempty"`
	GRPCStatus     map[string]int64 `json:"grpc_status,omitempty"`
	PushbackSeen   *int64           `json:"pushback_seen,omitempty"`
	FirstMessage   string           `json:"first_failure_message,omitempty"`
}

func (t *tally) result(mode string, l load, cpuS float64) result {
	window := float64(t.windowEnd-t.windowStart) / 1e9
	r := result{
		Mode:         mode,
		Streams:      l.streams,
		WindowS:      window,
		Started:      min(t.started.Load(), l.maxRequests),
		OK:           t.ok.Load(),
		Failed:       t.failed,
		Tokens:       t.tokens.Load(),
		Chunks:       t.chunks.Load(),
		Latency:      t.lat.summary(),
		ClientCPUS:   cpuS,
		ClientCPUPct: 100 * cpuS / window,
	}
	r.ReqPerS = float64(r.OK) / window
	r.TokensPerS = float64(r.Tokens) / window
	for k := range t.failed {
		r.FailedTop = append(r.FailedTop, k)
	}
	sort.Strings(r.FailedTop)
	if l.requestLatency {
		r.RequestLatency = t.reqLat.summary()
		r.FailedLatency = t.failLat.summary()
		r.GRPCStatus = t.statuses
		r.PushbackSeen = &t.pushbackSeen
		r.FirstMessage = t.firstMessage
	}
	return r
}

// measureCPU returns the CPU this process used inside the window; it
// blocks until the window has ended.
func measureCPU(t *tally) float64 {
	time.Sleep(time.Duration(t.windowStart - monoNs()))
	before := cpuSeconds()
	time.Sleep(time.Duration(t.windowEnd - monoNs()))
	return cpuSeconds() - before
}
