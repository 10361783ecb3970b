// Package relay is kpf's relay: the program that runs in the cluster
// (Server, the kpf relay command) and kpf's side of it. It carries UDP
// datagrams over a byte stream (Client, with the framing between them:
// the port-forward subresource carries streams only, and the relay turns
// each flow's frames back into datagrams), and TCP connections to
// destinations outside the pods (host/ and ip/ targets: a loopback
// listener per destination, piped to it). docs/relay-protocol.md is the
// specification.
package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Version is the protocol version this kpf speaks. 2: the relay also
// pipes TCP destinations (--tcp), a stream may open with PING (Check,
// the keep-alive of a relay without /udp ports), and a relay that reads
// another version answers with its own opening and an ERROR instead of
// closing without a word.
const Version = 2

// Magic opens a stream, both ways, followed by the version byte.
const Magic = "KPFRELAY"

// MaxDatagram is the largest UDP payload over IPv4 (65,535 − 8 − 20).
const MaxDatagram = 65507

// maxControl bounds the payload of a frame that is not DATA.
const maxControl = 1024

// headerLen is a frame's header: type, reserved, length (2), flow (4).
const headerLen = 8

// Frame types.
const (
	TypeHello = 1 // client: the target host:port (flow 0)
	TypeOK    = 2 // relay: hello accepted (flow 0)
	TypeError = 3 // relay: why not, or why the stream ends (flow 0)
	TypeData  = 4 // both ways: one datagram of a flow
	TypeClose = 5 // both ways: the flow is over
	TypePing  = 6 // both ways: keep-alive, echoed as PONG (flow 0)
	TypePong  = 7
	// The reverse side (kpf expose, docs/relay-protocol.md "Expose").
	TypeExpose = 8  // client: this stream is the exposure's control (flow 0)
	TypeAccept = 9  // relay, on the control stream: connection FLOW came to port PAYLOAD
	TypeJoin   = 10 // client: this stream carries connection FLOW
)

// Frame is one message of a stream.
type Frame struct {
	Type    byte
	Flow    uint32
	Payload []byte
}

// ProtocolError is a malformed stream: the receiver closes it.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "relay protocol: " + e.Msg }

func protoErr(format string, a ...any) error { return &ProtocolError{fmt.Sprintf(format, a...)} }

// Append appends f's encoding to b.
func Append(b []byte, f Frame) []byte {
	var h [headerLen]byte
	h[0] = f.Type
	binary.BigEndian.PutUint16(h[2:], uint16(len(f.Payload)))
	binary.BigEndian.PutUint32(h[4:], f.Flow)
	return append(append(b, h[:]...), f.Payload...)
}

// Reader reads frames from a stream, reusing one buffer: a frame's
// payload is valid until the next Read.
type Reader struct {
	r   io.Reader
	buf []byte
}

// NewReader reads frames from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r, buf: make([]byte, headerLen+MaxDatagram)} }

// Read reads the next frame. A frame that breaks the protocol (an unknown
// type, a datagram over MaxDatagram, a control frame over 1 KiB, DATA or
// CLOSE of flow 0, a control frame of a flow) is a *ProtocolError, and
// nothing of it is delivered.
func (r *Reader) Read() (Frame, error) {
	h := r.buf[:headerLen]
	if _, err := io.ReadFull(r.r, h); err != nil {
		return Frame{}, err
	}
	f := Frame{Type: h[0], Flow: binary.BigEndian.Uint32(h[4:])}
	n := int(binary.BigEndian.Uint16(h[2:]))
	if err := check(f.Type, f.Flow, n, h[1]); err != nil {
		return Frame{}, err
	}
	f.Payload = r.buf[headerLen : headerLen+n]
	if _, err := io.ReadFull(r.r, f.Payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	return f, nil
}

func check(typ byte, flow uint32, n int, reserved byte) error {
	if reserved != 0 {
		return protoErr("reserved byte %d, want 0", reserved)
	}
	switch typ {
	case TypeData:
		if flow == 0 {
			return protoErr("DATA of flow 0")
		}
		if n > MaxDatagram {
			return protoErr("a datagram of %d bytes (at most %d)", n, MaxDatagram)
		}
		return nil
	case TypeClose:
		if flow == 0 {
			return protoErr("CLOSE of flow 0")
		}
		if n != 0 {
			return protoErr("CLOSE with %d bytes", n)
		}
		return nil
	case TypeAccept, TypeJoin:
		if flow == 0 {
			return protoErr("frame type %d of flow 0", typ)
		}
		if n > maxControl {
			return protoErr("frame type %d of %d bytes (at most %d)", typ, n, maxControl)
		}
		return nil
	case TypeHello, TypeOK, TypeError, TypePing, TypePong, TypeExpose:
		if flow != 0 {
			return protoErr("frame type %d of flow %d (control frames are flow 0)", typ, flow)
		}
		if n > maxControl {
			return protoErr("frame type %d of %d bytes (at most %d)", typ, n, maxControl)
		}
		return nil
	}
	return protoErr("unknown frame type %d", typ)
}

// writeMagic sends the stream's opening: Magic and the version.
func writeMagic(w io.Writer) error {
	_, err := w.Write(append([]byte(Magic), Version))
	return err
}

// readMagic reads the other side's opening.
func readMagic(r io.Reader) error {
	var b [len(Magic) + 1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return err
	}
	if string(b[:len(Magic)]) != Magic {
		return protoErr("not a kpf relay stream (it began %q)", b[:len(Magic)])
	}
	if b[len(Magic)] != Version {
		return &VersionError{Theirs: int(b[len(Magic)])}
	}
	return nil
}

// VersionError is an opening of another protocol version: a relay image
// of another release than kpf's.
type VersionError struct{ Theirs int }

func (e *VersionError) Error() string {
	return fmt.Sprintf("relay protocol: the relay speaks version %d and this kpf version %d: run the relay image of this kpf's release (--relay-image; kpf relay image prints it)", e.Theirs, Version)
}

// ErrClosed is returned by a Client or Server that was closed.
var ErrClosed = errors.New("relay closed")
