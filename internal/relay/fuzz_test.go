package relay

import (
	"bytes"
	"errors"
	"io"
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
