// Package pattern is the deterministic byte stream that the sandbox's bulk
// and HTTP workloads send and that tests and benchmarks check: byte i of the
// stream depends on i alone, so a lost, repeated or reordered byte shows.
package pattern

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// word is the 8-byte word at word index k: a multiply and a shift, cheap
// enough that generating the stream is never what a benchmark measures.
func word(k uint64) uint64 {
	x := (k + 1) * 0x9E3779B97F4A7C15
	return x ^ x>>29
}

// Fill writes the stream's bytes from offset off into p.
func Fill(p []byte, off uint64) {
	i := 0
	// Unaligned head.
	for ; i < len(p) && (off+uint64(i))%8 != 0; i++ {
		o := off + uint64(i)
		p[i] = byte(word(o/8) >> (8 * (o % 8)))
	}
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], word((off+uint64(i))/8))
	}
	for ; i < len(p); i++ {
		o := off + uint64(i)
		p[i] = byte(word(o/8) >> (8 * (o % 8)))
	}
}

// Reader reads N bytes of the stream.
type Reader struct {
	N   uint64 // bytes left
	off uint64
}

// NewReader returns a reader of the first n bytes.
func NewReader(n uint64) *Reader { return &Reader{N: n} }

func (r *Reader) Read(p []byte) (int, error) {
	if r.N == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > r.N {
		p = p[:r.N]
	}
	Fill(p, r.off)
	r.off += uint64(len(p))
	r.N -= uint64(len(p))
	return len(p), nil
}

// Verifier is a writer that checks that what it is given is the stream.
type Verifier struct {
	off uint64
	buf []byte
	err error
}

// Write returns an error at the first byte that differs. It compares a
// chunk at a time with bytes.Equal (vector instructions) and looks for the
// differing byte only when a chunk differs: checking must cost the
// benchmarks' clients far less than moving the bytes.
func (v *Verifier) Write(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n := len(p)
	for len(p) > 0 {
		chunk := min(len(p), 32*1024)
		if cap(v.buf) < chunk {
			v.buf = make([]byte, 32*1024)
		}
		want := v.buf[:chunk]
		Fill(want, v.off)
		if !bytes.Equal(p[:chunk], want) {
			i := 0
			for p[i] == want[i] {
				i++
			}
			v.err = fmt.Errorf("pattern: byte %d is %#02x, want %#02x", v.off+uint64(i), p[i], want[i])
			return n - len(p) + i, v.err
		}
		v.off += uint64(chunk)
		p = p[chunk:]
	}
	return n, nil
}

// Count is how many bytes matched so far.
func (v *Verifier) Count() uint64 { return v.off }

// Copy copies from src to dst through buf, one Read and one Write at a
// time. Unlike io.CopyBuffer it never hands the copy to a TCP connection's
// ReadFrom or WriteTo, which would move 32 KiB per system call whatever buf
// is: the benchmarks' clients and servers must not be what they measure.
func Copy(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	var done int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			done += int64(w)
			if werr != nil {
				return done, werr
			}
		}
		if err == io.EOF {
			return done, nil
		}
		if err != nil {
			return done, err
		}
	}
}
