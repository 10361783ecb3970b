package relay

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

// FuzzReader: any bytes give frames that re-encode to exactly the bytes
// they came from, then an error (a *ProtocolError or the stream's end);
// never a panic, never a frame that breaks the rules.
func FuzzReader(f *testing.F) {
	f.Add(Append(Append(nil, Frame{Type: TypeHello, Payload: []byte("10.0.0.1:53")}), Frame{Type: TypeData, Flow: 7, Payload: []byte("q")}))
	f.Add(Append(nil, Frame{Type: TypeClose, Flow: 1}))
	f.Add([]byte{4, 0, 0xff, 0xe3, 0, 0, 0, 1})
	f.Add([]byte{6, 0, 0, 1, 0, 0, 0, 0, 'x'})
	f.Add(Append(Append(nil, Frame{Type: TypePing, Payload: []byte("check")}), Frame{Type: TypeHello, Payload: []byte("orders.example:53")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		var again []byte
		for {
			fr, err := r.Read()
			if err != nil {
				var pe *ProtocolError
				if !errors.As(err, &pe) && err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("error %T %v", err, err)
				}
				break
			}
			if len(fr.Payload) > MaxDatagram || (fr.Type == TypeData && fr.Flow == 0) || (fr.Type != TypeData && len(fr.Payload) > maxControl) {
				t.Fatalf("frame against the rules: type %d flow %d, %d bytes", fr.Type, fr.Flow, len(fr.Payload))
			}
			again = Append(again, fr)
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("frames re-encode to bytes that are not the input's")
		}
	})
}

// FuzzParseRoute: any --tcp value parses to a route that prints back to a
// value parsing to the same route (host names folded, IPs canonical), or
// to an error naming the value; never a panic, never port 0.
func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"4091=orders.example:5432", "4091=[fd00::7]:80", "1=10.1.2.3:65535", "0=a:1", "4091=a..b:1", "4091=ORDERS.Example.:5432", "x=y", "4091=[::ffff:10.0.0.1]:80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRoute(s)
		if err != nil {
			if !strings.Contains(err.Error(), "--tcp "+strconv.Quote(s)) {
				t.Fatalf("error %q does not name the value", err)
			}
			return
		}
		if r.Port == 0 || r.Dest.Port == 0 || r.Dest.Host == "" {
			t.Fatalf("%q: route %+v", s, r)
		}
		again, err := ParseRoute(r.String())
		if err != nil || again != r {
			t.Fatalf("%q -> %q -> %+v, %v", s, r.String(), again, err)
		}
		if _, err := ParseHost(r.Dest.Host); err != nil {
			t.Fatalf("%q: host %q does not parse again: %v", s, r.Dest.Host, err)
		}
	})
}
