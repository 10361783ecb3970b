package mcp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// Stdio is kpf mcp's transport: newline-delimited JSON-RPC on In and Out,
// as the SDK's StdioTransport, except that a line that is not a JSON-RPC
// message is answered with a JSON-RPC error (-32700 parse error for what
// is not JSON, -32600 invalid request for JSON that is no message or is
// a batch, which the protocol version 2025-06-18 no longer has) and
// the session goes on, as JSON-RPC 2.0 (§5.1) expects. The SDK's own
// transport (go-sdk v1.8.0) ends the session at such a line, and with it
// the forwards the agent started: one stray line of a client's would cost
// them all.
type Stdio struct {
	In  io.ReadCloser
	Out io.Writer
}

// maxLine bounds one line, as the SDK's transport bounds one message.
const maxLine = sdk.DefaultMaxLineLength

// Connect implements sdk.Transport.
func (t *Stdio) Connect(ctx context.Context) (sdk.Connection, error) {
	out := &lockedWriter{w: t.Out}
	in := &messageLines{r: bufio.NewReader(t.In), closer: t.In, answer: out}
	return (&sdk.IOTransport{Reader: in, Writer: out}).Connect(ctx)
}

// lockedWriter writes one message at a time: the SDK's answers and the
// errors messageLines sends go to the same stream.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (w *lockedWriter) Close() error { return nil } // stdout outlives the session

// messageLines passes on the lines of r that are JSON-RPC messages, and
// answers the others itself.
type messageLines struct {
	r       *bufio.Reader
	closer  io.Closer
	answer  io.Writer
	pending []byte
	err     error
}

func (m *messageLines) Close() error { return m.closer.Close() }

func (m *messageLines) Read(p []byte) (int, error) {
	for len(m.pending) == 0 {
		if m.err != nil {
			return 0, m.err
		}
		line, err := m.line()
		m.err = err
		if msg := bytes.TrimSpace(line); len(msg) > 0 {
			if e := refuse(msg); e != nil {
				if _, werr := m.answer.Write(e); werr != nil {
					return 0, werr
				}
				continue
			}
			m.pending = append(msg, '\n')
		}
	}
	n := copy(p, m.pending)
	m.pending = m.pending[n:]
	return n, nil
}

// line reads the next line; one longer than maxLine is skipped whole and
// returned as a line that is not JSON, to be answered as such.
func (m *messageLines) line() ([]byte, error) {
	var line []byte
	long := false
	for {
		chunk, err := m.r.ReadSlice('\n')
		if long = long || len(line)+len(chunk) > maxLine; long {
			line = []byte{0} // not JSON: answered with a parse error
		} else {
			line = append(line, chunk...)
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}

// refuse is the JSON-RPC error that answers msg, or nil when msg is a
// message for the SDK.
func refuse(msg []byte) []byte {
	if !json.Valid(msg) {
		what := "not JSON"
		if len(msg) == 1 && msg[0] == 0 {
			what = fmt.Sprintf("a line longer than %d bytes", maxLine)
		}
		return errorLine(nil, jsonrpc.CodeParseError, "parse error: "+what+" (each line must be one JSON-RPC message)")
	}
	if msg[0] == '[' {
		// A batch: the protocol (2025-06-18) has none, and the SDK ends the
		// session at one: refused as one invalid request.
		return errorLine(nil, jsonrpc.CodeInvalidRequest, "invalid request: JSON-RPC batches are not supported (MCP 2025-06-18 removed batching): send each message on a line of its own")
	}
	if _, err := jsonrpc.DecodeMessage(msg); err != nil {
		var with struct {
			ID json.RawMessage `json:"id"`
		}
		json.Unmarshal(msg, &with)
		return errorLine(with.ID, jsonrpc.CodeInvalidRequest, fmt.Sprintf("invalid request: %v", err))
	}
	return nil
}

// errorLine is a JSON-RPC error answer to the request of id (null when it
// cannot be told, or is no valid id).
func errorLine(id json.RawMessage, code int64, message string) []byte {
	var v any
	if json.Unmarshal(id, &v) != nil {
		v = nil
	}
	switch v.(type) {
	case string, float64:
	default:
		id = json.RawMessage("null")
	}
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   struct {
			Code    int64  `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}{JSONRPC: "2.0", ID: id, Error: struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	}{code, message}})
	return append(b, '\n')
}
