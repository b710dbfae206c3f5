package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// The relay floor in a compiled runtime: the least a gRPC relay to the
// worker does, written with Go's net/http HTTP/2 server. Each Generate
// call becomes a `generate` frame on one shared worker connection
// (protocol version 2, as the sidecar speaks it), and each chunk the
// worker sends is written to its call and flushed as it arrives. No
// validation, metering, heartbeats or reconnects. Scenario 1 loads it
// beside the sidecar and the grpc-js relays (bench/probe/grpc_relay.mjs)
// with the same client, so that what one more hop costs on this machine
// can be told apart from what a runtime costs.

// relayFrame is what the relay reads of a worker frame.
type relayFrame struct {
	Type         string       `json:"type"`
	ID           string       `json:"id"`
	Text         string       `json:"text"`
	Tokens       []uint32     `json:"token_ids"`
	Items        []relayFrame `json:"items"`
	FinishReason string       `json:"finish_reason"`
	Usage        struct {
		Prompt     uint32 `json:"prompt_tokens"`
		Completion uint32 `json:"completion_tokens"`
	} `json:"usage"`
	Message string `json:"message"`
}

type relay struct {
	mu    sync.Mutex // guards w and calls
	w     *bufio.Writer
	calls map[string]chan relayFrame
	seq   int
}

func (r *relay) send(v any) {
	payload, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var header [4]byte
	binary.BigEndian.PutUint32(header[:], uint32(len(payload)))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.w.Write(header[:])
	r.w.Write(payload)
	if err := r.w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "relay: worker write:", err)
		os.Exit(1)
	}
}

// readLoop hands each chunk, done and error to its call.
func (r *relay) readLoop(br *bufio.Reader) {
	buf := make([]byte, 64<<10)
	for {
		var header [4]byte
		if _, err := io.ReadFull(br, header[:]); err != nil {
			fmt.Fprintln(os.Stderr, "relay: worker closed the socket:", err)
			os.Exit(1)
		}
		n := int(binary.BigEndian.Uint32(header[:]))
		if n > len(buf) {
			buf = make([]byte, n)
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			fmt.Fprintln(os.Stderr, "relay: worker read:", err)
			os.Exit(1)
		}
		var f relayFrame
		if err := json.Unmarshal(buf[:n], &f); err != nil {
			fmt.Fprintln(os.Stderr, "relay: bad frame:", err)
			os.Exit(1)
		}
		if f.Type == "chunks" {
			for _, item := range f.Items {
				item.Type = "chunk"
				r.deliver(item)
			}
		} else {
			r.deliver(f)
		}
	}
}

func (r *relay) deliver(f relayFrame) {
	r.mu.Lock()
	ch := r.calls[f.ID]
	if f.Type == "done" || f.Type == "error" {
		delete(r.calls, f.ID)
	}
	r.mu.Unlock()
	if ch != nil {
		// Credit bounds what a call can have queued: 32 chunks and its end.
		ch <- f
	}
}

// grpcFrame frames a protobuf message as one gRPC message.
func grpcFrame(msg []byte) []byte {
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return append(frame, msg...)
}

func appendBytes(b []byte, field int, v []byte) []byte {
	b = appendVarint(b, uint64(field<<3|2))
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

// chunkEvent encodes GenerateEvent{request_id, chunk{text, token_ids}}.
func chunkEvent(requestID string, f relayFrame) []byte {
	var chunk []byte
	chunk = appendString(chunk, 1, f.Text)
	var ids []byte
	for _, t := range f.Tokens {
		ids = appendVarint(ids, uint64(t))
	}
	if len(ids) > 0 {
		chunk = appendBytes(chunk, 2, ids)
	}
	var msg []byte
	msg = appendString(msg, 1, requestID)
	msg = appendBytes(msg, 2, chunk)
	return grpcFrame(msg)
}

// doneEvent encodes GenerateEvent{request_id, done{finish_reason, usage}}.
func doneEvent(requestID string, f relayFrame) []byte {
	var usage []byte
	usage = appendVarint(usage, 1<<3|0)
	usage = appendVarint(usage, uint64(f.Usage.Prompt))
	usage = appendVarint(usage, 2<<3|0)
	usage = appendVarint(usage, uint64(f.Usage.Completion))
	var done []byte
	done = appendString(done, 1, f.FinishReason)
	done = appendBytes(done, 2, usage)
	var msg []byte
	msg = appendString(msg, 1, requestID)
	msg = appendBytes(msg, 4, done)
	return grpcFrame(msg)
}

// requestFields reads request_id (1), session_id (2) and prompt (4) of a
// GenerateRequest message.
func requestFields(msg []byte) (id, session, prompt string, err error) {
	err = eachField(msg, func(field, wire int, _ uint64, data []byte) error {
		if wire != 2 {
			return nil
		}
		switch field {
		case 1:
			id = string(data)
		case 2:
			session = string(data)
		case 4:
			prompt = string(data)
		}
		return nil
	})
	return
}

func (r *relay) generate(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil || len(body) < 5 {
		http.Error(w, "no request message", http.StatusBadRequest)
		return
	}
	requestID, session, prompt, err := requestFields(body[5:])
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ch := make(chan relayFrame, relayCredit+1)
	r.mu.Lock()
	r.seq++
	id := fmt.Sprintf("r%d", r.seq)
	r.calls[id] = ch
	r.mu.Unlock()
	r.send(map[string]any{
		"type": "generate", "id": id, "session_id": session, "model_id": "",
		"prompt": prompt, "sampling": map[string]any{"max_tokens": 0}, "credit": relayCredit,
	})

	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Trailer", "Grpc-Status, Grpc-Message")
	w.WriteHeader(http.StatusOK)
	flusher := w.(http.Flusher)
	owed := 0
	for {
		select {
		case <-req.Context().Done():
			r.mu.Lock()
			_, open := r.calls[id]
			delete(r.calls, id)
			r.mu.Unlock()
			if open {
				r.send(map[string]any{"type": "cancel", "id": id})
			}
			return
		case f := <-ch:
			switch f.Type {
			case "chunk":
				w.Write(chunkEvent(requestID, f))
				flusher.Flush()
				if owed++; owed >= relayCredit/2 {
					r.send(map[string]any{"type": "credit", "id": id, "chunks": owed})
					owed = 0
				}
			case "done":
				w.Write(doneEvent(requestID, f))
				h.Set("Grpc-Status", "0")
				return
			case "error":
				h.Set("Grpc-Status", "13")
				h.Set("Grpc-Message", f.Message)
				return
			}
		}
	}
}

// relayCredit is the sidecar's default credit window (32 chunks, given
// back in halves).
const relayCredit = 32

func runRelay(listen, socket string) error {
	conn, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	r := &relay{w: bufio.NewWriter(conn), calls: map[string]chan relayFrame{}}
	r.send(map[string]any{
		"type": "hello", "versions": []int{2}, "sidecar": "cy-bench-relay-go/1",
		"max_frame_bytes": 1 << 20, "heartbeat_interval_ms": 0,
	})
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	fc := &floorConn{r: br}
	welcome, _, err := fc.read(make([]byte, 4096))
	if err != nil {
		return fmt.Errorf("no welcome: %w", err)
	}
	var wf relayFrame
	if json.Unmarshal(welcome, &wf) != nil || wf.Type != "welcome" {
		return fmt.Errorf("expected welcome, got %s", welcome)
	}
	conn.SetReadDeadline(time.Time{})
	go r.readLoop(br)

	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cy.sidecar.v1.Sidecar/Generate", r.generate)
	srv := &http.Server{
		Handler:   mux,
		Protocols: &protocols,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1024},
	}
	fmt.Printf("relay listening on %s\n", ln.Addr())
	return srv.Serve(ln)
}
