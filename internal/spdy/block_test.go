package spdy

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"io"
	"net/http"
	"testing"
)

// TestHeaderBlocksDecodeAsSpdystreamDoes decodes consecutive header blocks
// the way moby/spdystream does: one zlib reader over a LimitedReader reset
// to each frame's size, which must be used up exactly.
func TestHeaderBlocksDecodeAsSpdystreamDoes(t *testing.T) {
	c := &Conn{}
	var frames [][]byte
	for _, v := range []string{"error", "data", "error"} {
		h := http.Header{}
		h.Set("streamType", v)
		h.Set("port", "80")
		frames = append(frames, c.headerBlock(h))
	}
	var wire bytes.Buffer
	for _, f := range frames {
		wire.Write(f)
	}
	lr := io.LimitedReader{R: &wire}
	var zr io.ReadCloser
	for i, f := range frames {
		lr.N = int64(len(f))
		if zr == nil {
			var err error
			if zr, err = zlib.NewReaderDict(&lr, dictionary); err != nil {
				t.Fatal(err)
			}
		}
		var n uint32
		if err := binary.Read(zr, binary.BigEndian, &n); err != nil {
			t.Fatalf("frame %d: count: %v", i, err)
		}
		for range n * 2 {
			var l uint32
			if err := binary.Read(zr, binary.BigEndian, &l); err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			io.CopyN(io.Discard, zr, int64(l))
		}
		if lr.N != 0 {
			t.Fatalf("frame %d: %d compressed bytes left unread", i, lr.N)
		}
	}
}
