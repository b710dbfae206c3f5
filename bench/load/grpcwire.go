package main

import (
	"encoding/binary"
	"errors"
)

// The few protobuf messages of cy.sidecar.v1 the load generator needs,
// encoded and decoded by hand so that it needs no generated code and no
// module outside the standard library. Field numbers are those of
// proto/cy/sidecar/v1/sidecar.proto.

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

func appendString(b []byte, field int, s string) []byte {
	if s == "" {
		return b
	}
	b = appendVarint(b, uint64(field<<3|2))
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

// generateRequest encodes a GenerateRequest as one gRPC message frame
// (compression flag, big-endian length, message).
func generateRequest(requestID, sessionID, prompt string, maxTokens uint32) []byte {
	var msg []byte
	msg = appendString(msg, 1, requestID)
	msg = appendString(msg, 2, sessionID)
	msg = appendString(msg, 4, prompt)
	// sampling (6) = SamplingParams { max_tokens (1) }
	var sampling []byte
	if maxTokens > 0 {
		sampling = appendVarint(sampling, 1<<3|0)
		sampling = appendVarint(sampling, uint64(maxTokens))
	}
	msg = appendVarint(msg, 6<<3|2)
	msg = appendVarint(msg, uint64(len(sampling)))
	msg = append(msg, sampling...)

	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	return append(frame, msg...)
}

// event is what the load generator keeps of a GenerateEvent.
type event struct {
	kind   string // "chunk", "system", "done", "error" or "" (none set)
	text   []byte // chunk text (aliases the message buffer)
	tokens int    // chunk token ids
}

var errTruncated = errors.New("truncated protobuf message")

func readVarint(b []byte) (uint64, int, error) {
	var v uint64
	for i := 0; i < len(b) && i < 10; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errTruncated
}

// eachField calls f for every field of a message; for length-delimited
// fields `data` is the payload, for varints `v` is the value.
func eachField(b []byte, f func(field int, wire int, v uint64, data []byte) error) error {
	for len(b) > 0 {
		tag, n, err := readVarint(b)
		if err != nil {
			return err
		}
		b = b[n:]
		field, wire := int(tag>>3), int(tag&7)
		switch wire {
		case 0:
			v, n, err := readVarint(b)
			if err != nil {
				return err
			}
			b = b[n:]
			if err := f(field, wire, v, nil); err != nil {
				return err
			}
		case 2:
			l, n, err := readVarint(b)
			if err != nil || uint64(len(b)-n) < l {
				return errTruncated
			}
			data := b[n : n+int(l)]
			b = b[n+int(l):]
			if err := f(field, wire, 0, data); err != nil {
				return err
			}
		case 1:
			if len(b) < 8 {
				return errTruncated
			}
			b = b[8:]
		case 5:
			if len(b) < 4 {
				return errTruncated
			}
			b = b[4:]
		default:
			return errors.New("unsupported protobuf wire type")
		}
	}
	return nil
}

// decodeEvent reads a GenerateEvent.
func decodeEvent(b []byte) (event, error) {
	var ev event
	err := eachField(b, func(field, wire int, _ uint64, data []byte) error {
		switch field {
		case 2:
			ev.kind = "chunk"
			return eachField(data, func(field, wire int, _ uint64, data []byte) error {
				switch {
				case field == 1:
					ev.text = data
				case field == 2 && wire == 0:
					ev.tokens++
				case field == 2 && wire == 2:
					// Packed: one varint per token id.
					for len(data) > 0 {
						_, n, err := readVarint(data)
						if err != nil {
							return err
						}
						data = data[n:]
						ev.tokens++
					}
				}
				return nil
			})
		case 3:
			ev.kind = "system"
		case 4:
			ev.kind = "done"
		case 5:
			ev.kind = "error"
		}
		return nil
	})
	return ev, err
}
