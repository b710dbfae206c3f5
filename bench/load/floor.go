package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// The floor: the same generations read straight off the worker's socket
// by a minimal client of the worker protocol (docs/worker-protocol.md),
// so that the sidecar's share of a token's transit can be told apart
// from the worker's own and from the reader's.

// floorCredit is the credit window each generation starts with, and
// floorGrant the credit given back at a time: the sidecar's defaults
// (worker.stream_credit_chunks = 32, returned in halves).
const (
	floorCredit = 32
	floorGrant  = floorCredit / 2
)

type frameIn struct {
	Type    string `json:"type"`
	ID      string `json:"id"`
	Text    string `json:"text"`
	Tokens  []int  `json:"token_ids"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

type floorConn struct {
	r *bufio.Reader
	w *bufio.Writer
	// filledNs is when the reader's buffer was last filled from the socket.
	filledNs int64
}

func (c *floorConn) send(v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var header [4]byte
	binary.BigEndian.PutUint32(header[:], uint32(len(payload)))
	c.w.Write(header[:])
	c.w.Write(payload)
	return c.w.Flush()
}

// read returns the next frame's payload and when it arrived: when the
// read from the socket that completed it returned. A frame that was
// already in the buffer arrived with the read that brought it, so the
// decoding of the frames before it (a batch of 64 takes a few hundred µs
// of encoding/json) is not counted as its transit.
func (c *floorConn) read(buf []byte) ([]byte, int64, error) {
	var header [4]byte
	if c.r.Buffered() < len(header) {
		if _, err := io.ReadFull(c.r, header[:]); err != nil {
			return nil, 0, err
		}
		c.filledNs = monoNs()
	} else if _, err := io.ReadFull(c.r, header[:]); err != nil {
		return nil, 0, err
	}
	n := int(binary.BigEndian.Uint32(header[:]))
	if n > len(buf) {
		buf = make([]byte, n)
	}
	if c.r.Buffered() < n {
		if _, err := io.ReadFull(c.r, buf[:n]); err != nil {
			return nil, 0, err
		}
		c.filledNs = monoNs()
	} else if _, err := io.ReadFull(c.r, buf[:n]); err != nil {
		return nil, 0, err
	}
	return buf[:n], c.filledNs, nil
}

// runFloor keeps `streams` generations in flight on one worker connection.
func runFloor(l load, socket string) (result, error) {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return result{}, err
	}
	defer conn.Close()
	c := &floorConn{r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriter(conn)}

	// Handshake.
	if err := c.send(map[string]any{
		"type": "hello", "versions": []int{1}, "sidecar": "cy-bench-floor/1",
		"max_frame_bytes": 1 << 20, "heartbeat_interval_ms": 0,
	}); err != nil {
		return result{}, err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	welcome, _, err := c.read(make([]byte, 4096))
	if err != nil {
		return result{}, fmt.Errorf("no welcome: %w", err)
	}
	var w frameIn
	if json.Unmarshal(welcome, &w) != nil || w.Type != "welcome" {
		return result{}, fmt.Errorf("expected welcome, got %s", welcome)
	}

	start := monoNs()
	t := newTally(l, start)
	cpu := make(chan float64, 1)
	go func() { cpu <- measureCPU(t) }()
	conn.SetReadDeadline(time.Now().Add(l.duration))

	owed := map[string]int{}
	next := 0
	startOne := func() error {
		if !t.takeTicket(l) {
			return nil
		}
		next++
		id := fmt.Sprintf("%s-%d", l.prefix, next)
		owed[id] = 0
		return c.send(map[string]any{
			"type": "generate", "id": id, "session_id": l.session, "model_id": "",
			"prompt": l.prompt, "sampling": map[string]any{"max_tokens": l.maxTokens},
			"credit": floorCredit,
		})
	}
	for i := 0; i < l.streams; i++ {
		if err := startOne(); err != nil {
			return result{}, err
		}
	}

	buf := make([]byte, 64<<10)
	var lats []int64
	for {
		payload, now, err := c.read(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				break // the run's time is up
			}
			fmt.Fprintln(os.Stderr, "floor: read:", err)
			t.fail("read")
			break
		}
		var f frameIn
		if err := json.Unmarshal(payload, &f); err != nil {
			t.fail("decode")
			break
		}
		switch f.Type {
		case "chunk":
			if t.inWindow(now) {
				t.tokens.Add(int64(len(f.Tokens)))
				t.chunks.Add(1)
				if l.stamp {
					if stamp, ok := stampOf([]byte(f.Text)); ok {
						lats = append(lats, now-stamp)
					}
				}
			}
			owed[f.ID]++
			if owed[f.ID] >= floorGrant {
				if err := c.send(map[string]any{"type": "credit", "id": f.ID, "chunks": owed[f.ID]}); err != nil {
					return result{}, err
				}
				owed[f.ID] = 0
			}
		case "done", "error":
			delete(owed, f.ID)
			if f.Type == "done" {
				if t.inWindow(now) {
					t.ok.Add(1)
				}
			} else {
				t.fail("worker_" + f.Code)
			}
			if err := startOne(); err != nil {
				return result{}, err
			}
		case "ping":
			// Not expected: this client announced no heartbeat.
		}
	}
	t.lat.add(lats)
	return t.result("floor", l, <-cpu), nil
}
