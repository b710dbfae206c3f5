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
	"sync"
	"time"
)

// grpcCodes names the gRPC status codes, for the failure counts.
var grpcCodes = map[string]string{
	"1": "CANCELLED", "2": "UNKNOWN", "3": "INVALID_ARGUMENT",
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
				generateOnce(ctx, client, url, id, l, t)
			}
		}(i)
	}
	cpu := measureCPU(t)
	cancel()
	wg.Wait()
	return t.result("grpc", l, cpu)
}

// generateOnce runs one Generate call to its end.
func generateOnce(ctx context.Context, client *http.Client, url, id string, l load, t *tally) {
	frame := generateRequest(id, l.session, l.prompt, l.maxTokens)
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(frame))
	if err != nil {
		panic(err)
	}
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")

	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			t.fail("transport")
		}
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.fail(fmt.Sprintf("http_%d", resp.StatusCode))
		return
	}
	// A trailers-only answer carries its status in the headers.
	if s := resp.Header.Get("grpc-status"); s != "" && s != "0" {
		t.fail(codeName(s))
		return
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
			if ctx.Err() == nil {
				t.fail("read")
			}
			return
		}
		n := int(binary.BigEndian.Uint32(header[1:]))
		if n > len(buf) {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(body, buf[:n]); err != nil {
			if ctx.Err() == nil {
				t.fail("read")
			}
			return
		}
		now := monoNs()
		ev, err := decodeEvent(buf[:n])
		if err != nil {
			t.fail("decode")
			return
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

	status := resp.Trailer.Get("grpc-status")
	switch {
	case status == "0":
		if t.inWindow(monoNs()) {
			t.ok.Add(1)
		}
	case status == "":
		t.fail("no_status")
	default:
		t.fail(codeName(status))
	}
}
