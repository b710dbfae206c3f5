package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// runBilling is a billing endpoint that takes every batch at once: the
// fastest billing service there can be, so that a metering benchmark
// measures the sidecar's side only. It serves until SIGTERM or until
// `lifetime` has passed.
func runBilling(listen string, lifetime time.Duration) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	var batches, bytes atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(map[string]int64{"batches": batches.Load(), "bytes": bytes.Load()})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		batches.Add(1)
		bytes.Add(n)
		w.Header().Set("content-type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	})
	server := &http.Server{Handler: mux}
	fmt.Fprintf(os.Stderr, "billing listening on %s\n", ln.Addr())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case <-stop:
		case <-time.After(lifetime):
		}
		server.Close()
	}()
	if err := server.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}
