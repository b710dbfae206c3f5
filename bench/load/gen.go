package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// grpcCodes names the gRPC status codes, for the failure counts.
var grpcCodes = map[string]string{
	"0": "OK", "1": "CANCELLED", "2": "UNKNOWN", "3": "INVALID_ARGUMENT",
	"4": "DEADLINE_EXCEEDED", "5": "NOT_FOUND", "6": "ALREADY_EXISTS",
	"7": "PERMISSION_DENIED", "8": "RESOURCE_EXHAUSTED",
	"9": "FAILED_PRECONDITION", "10": "ABORTED", "11": "OUT_OF_RANGE",
	"12": "UNIMPLEMENTED", "13": "INTERNAL", "14": "UNAVAILABLE",
	"15": "DATA_LOSS", "16": "UNAUTHENTICATED",
}

func codeName(status string) string {
	if name, ok := grpcCodes[status]; ok {
		return name
	}
	return "status_" + status
}

// grpcMessage is a status's grpc-message, percent-decoded.
func grpcMessage(md http.Header) string {
	raw := md.Get("grpc-message")
	if msg, err := url.PathUnescape(raw); err == nil {
		return msg
	}
	return raw
}

// newClient is one HTTP/2 connection pool speaking h2c (prior knowledge),
// as a gRPC channel does.
func newClient() *http.Client {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:          &protocols,
		DisableCompression: true,
		Proxy:              nil,
		HTTP2:              &http.HTTP2Config{MaxReceiveBufferPerStream: 1 << 20},
	}}
}

// runGen drives `Sidecar/Generate` at `addr` with `conns` connections.
func runGen(l load, addr string, conns int, ramp time.Duration) result {
	clients := make([]*http.Client, conns)
	for i := range clients {
		clients[i] = newClient()
	}
	url := "http://" + addr + "/cy.sidecar.v1.Sidecar/Generate"

	start := monoNs()
	t := newTally(l, start)
	ctx, cancel := context.WithTimeout(context.Background(), l.duration)
	defer cancel()

	var wg sync.WaitGroup
	for i := 0; i < l.streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Spread over the ramp, streams open as a gateway's would; all
			// at once, the first ones would also open extra connections
			// before the server's stream limit is known.
			if ramp > 0 {
				time.Sleep(ramp * time.Duration(i) / time.Duration(l.streams))
			}
			client := clients[i%conns]
			for ctx.Err() == nil && t.takeTicket(l) {
				id := fmt.Sprintf("%s-%d-%d", l.prefix, i, t.started.Load())
				t.end(l, generateOnce(ctx, client, url, id, l, t))
			}
		}(i)
	}
	cpu := measureCPU(t)
	cancel()
	wg.Wait()
	return t.result("grpc", l, cpu)
}

// ending is how one Generate call ended.
type ending struct {
	// kind is "ok", the failure's kind (a status code name, "transport",
	// "read", ...), or "" when the run's end cut the call short.
	kind string
	// status is the grpc-status received ("" when none was); md holds it,
	// with grpc-message and grpc-retry-pushback-ms: the trailers, or the
	// headers of a trailers-only answer.
	status string
	md     http.Header
	// sentNs is when the request was handed to the connection, endNs when
	// its final status (or its failure) arrived; CLOCK_MONOTONIC ns.
	sentNs, endNs int64
}

// generateOnce runs one Generate call to its end.
func generateOnce(ctx context.Context, client *http.Client, url, id string, l load, t *tally) ending {
	frame := generateRequest(id, l.session, l.prompt, l.maxTokens)
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(frame))
	if err != nil {
		panic(err)
	}
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")

	e := ending{sentNs: monoNs()}
	// failed ends the call as a failure of `kind`, unless the run's end
	// caused it.
	failed := func(kind string) ending {
		e.endNs = monoNs()
		if ctx.Err() == nil {
			e.kind = kind
		}
		return e
	}

	resp, err := client.Do(req)
	if err != nil {
		return failed("transport")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return failed(fmt.Sprintf("http_%d", resp.StatusCode))
	}
	// A trailers-only answer carries its status in the headers.
	if s := resp.Header.Get("grpc-status"); s != "" && s != "0" {
		e.status, e.md = s, resp.Header
		return failed(codeName(s))
	}

	body := bufio.NewReaderSize(resp.Body, 16<<10)
	var header [5]byte
	buf := make([]byte, 256)
	var lats []int64
	defer func() {
		if len(lats) > 0 {
			t.lat.add(lats)
		}
	}()
	for {
		if _, err := io.ReadFull(body, header[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return failed("read")
		}
		n := int(binary.BigEndian.Uint32(header[1:]))
		if n > len(buf) {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(body, buf[:n]); err != nil {
			return failed("read")
		}
		now := monoNs()
		ev, err := decodeEvent(buf[:n])
		if err != nil {
			// Not the run's end: a message that does not decode is a failure.
			e.endNs, e.kind = now, "decode"
			return e
		}
		if ev.kind != "chunk" || !t.inWindow(now) {
			continue
		}
		t.tokens.Add(int64(ev.tokens))
		t.chunks.Add(1)
		if l.stamp {
			if stamp, ok := stampOf(ev.text); ok {
				lats = append(lats, now-stamp)
			}
		}
	}

	e.endNs = monoNs()
	e.status, e.md = resp.Trailer.Get("grpc-status"), resp.Trailer
	if e.status == "" && resp.Header.Get("grpc-status") == "0" {
		// A trailers-only OK.
		e.status, e.md = "0", resp.Header
	}
	switch e.status {
	case "0":
		e.kind = "ok"
	case "":
		e.kind = "no_status"
	default:
		e.kind = codeName(e.status)
	}
	return e
}
