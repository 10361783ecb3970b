package mcp

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

// A line that is not a JSON-RPC message is answered with a JSON-RPC
// error, and the session goes on: the next requests are answered (the
// SDK's stdio transport ended the session, and the agent's forwards).
func TestStdioAnswersBadLinesAndGoesOn(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- New(Options{Daemon: &fakeDaemon{}, Cluster: fakeCluster{}}).Run(ctx, &Stdio{In: inR, Out: outW})
	}()
	answers := bufio.NewScanner(outR)
	answers.Buffer(nil, 1<<20)
	send := func(line string) map[string]any {
		t.Helper()
		if _, err := io.WriteString(inW, line+"\n"); err != nil {
			t.Fatal(err)
		}
		if !answers.Scan() {
			t.Fatalf("no answer to %q: %v", line, answers.Err())
		}
		var m map[string]any
		if err := json.Unmarshal(answers.Bytes(), &m); err != nil {
			t.Fatalf("answer %q: %v", answers.Text(), err)
		}
		return m
	}
	code := func(m map[string]any) float64 {
		e, _ := m["error"].(map[string]any)
		c, _ := e["code"].(float64)
		return c
	}
	for _, tc := range []struct {
		line string
		code float64
		id   any
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}`, -32700, nil},
		{"hello", -32700, nil},
		{"42", -32600, nil},
		{`{"jsonrpc":"2.0","id":7,"method":5}`, -32600, 7.0},
		{`{"jsonrpc":"1.0","id":"a","method":"ping"}`, -32600, "a"},
		// Batches: the protocol has none, the SDK ended the session at one.
		{`[]`, -32600, nil},
		{`[1]`, -32600, nil},
		{` [{"jsonrpc":"2.0","id":3,"method":"ping"}]`, -32600, nil},
	} {
		m := send(tc.line)
		if code(m) != tc.code || m["id"] != tc.id || !strings.Contains(answers.Text(), "message") {
			t.Fatalf("%q: answered %v, want code %v id %v", tc.line, m, tc.code, tc.id)
		}
	}
	// The session goes on.
	m := send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	if m["result"] == nil {
		t.Fatalf("initialize: %v", m)
	}
	io.WriteString(inW, `{"jsonrpc":"2.0","method":"notifications/initialized"}`+"\n")
	m = send("{oops")
	if code(m) != -32700 {
		t.Fatalf("a second bad line: %v", m)
	}
	m = send(`[{"jsonrpc":"2.0","id":3,"method":"ping"}]`)
	if code(m) != -32600 || !strings.Contains(answers.Text(), "batch") {
		t.Fatalf("a batch in session: %v", m)
	}
	m = send(`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	if res, _ := m["result"].(map[string]any); res == nil || len(res["tools"].([]any)) == 0 {
		t.Fatalf("tools/list after bad lines: %v", m)
	}
	inW.Close() // the client goes: the session ends
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not return at the end of its input")
	}
}

// Whatever comes on stdin, what reaches the SDK is lines of JSON, and
// every other line is answered with a JSON-RPC error line.
func FuzzStdioLines(f *testing.F) {
	f.Add([]byte("hello\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n42\n[1]\n"))
	f.Add([]byte("{oops\r\n\n  \n{\"id\":[1],\"method\":5}"))
	f.Add([]byte("[]\n[1]\n[{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ping\"}]\n  [ ]\r\n{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ping\"}\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		var answers strings.Builder
		m := &messageLines{r: bufio.NewReader(strings.NewReader(string(in))), closer: io.NopCloser(nil), answer: &answers}
		out, err := io.ReadAll(m)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
			if l != "" && !json.Valid([]byte(l)) {
				t.Fatalf("passed on %q", l)
			}
		}
		for _, l := range strings.Split(strings.TrimSuffix(answers.String(), "\n"), "\n") {
			var e struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   struct{ Code int }
			}
			if l != "" && (json.Unmarshal([]byte(l), &e) != nil || e.JSONRPC != "2.0" || e.Error.Code >= 0) {
				t.Fatalf("answered %q", l)
			}
		}
	})
}
