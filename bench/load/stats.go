package main

import (
	"sort"
	"sync"
)

// maxSamples bounds the memory a run's latency samples take (8 bytes
// each); past it, samples are still counted but no longer kept.
const maxSamples = 8_000_000

// recorder collects latency samples from many goroutines.
type recorder struct {
	mu      sync.Mutex
	samples []int64
	dropped int64
}

func (r *recorder) add(batch []int64) {
	r.mu.Lock()
	room := maxSamples - len(r.samples)
	if room < len(batch) {
		r.dropped += int64(len(batch) - max(room, 0))
		batch = batch[:max(room, 0)]
	}
	r.samples = append(r.samples, batch...)
	r.mu.Unlock()
}

// latency is the distribution of a run's samples, in microseconds.
type latency struct {
	Count   int     `json:"count"`
	Dropped int64   `json:"dropped"`
	Min     float64 `json:"min_us"`
	P50     float64 `json:"p50_us"`
	P90     float64 `json:"p90_us"`
	P99     float64 `json:"p99_us"`
	P999    float64 `json:"p999_us"`
	Max     float64 `json:"max_us"`
	Mean    float64 `json:"mean_us"`
}

func (r *recorder) summary() *latency {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.samples
	if len(s) == 0 {
		return nil
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	// Nearest rank: the smallest sample with at least q of them at or below.
	at := func(q float64) float64 {
		i := int(q*float64(len(s))+0.999999) - 1
		i = min(max(i, 0), len(s)-1)
		return float64(s[i]) / 1000
	}
	var sum float64
	for _, v := range s {
		sum += float64(v)
	}
	return &latency{
		Count:   len(s),
		Dropped: r.dropped,
		Min:     float64(s[0]) / 1000,
		P50:     at(0.50),
		P90:     at(0.90),
		P99:     at(0.99),
		P999:    at(0.999),
		Max:     float64(s[len(s)-1]) / 1000,
		Mean:    sum / float64(len(s)) / 1000,
	}
}
