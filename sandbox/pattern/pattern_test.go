package pattern

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestFillIsPositional(t *testing.T) {
	whole := make([]byte, 1000)
	Fill(whole, 0)
	for _, off := range []int{0, 1, 7, 8, 13, 500} {
		part := make([]byte, 123)
		Fill(part, uint64(off))
		if !bytes.Equal(part, whole[off:off+123]) {
			t.Errorf("Fill at offset %d differs from the whole stream", off)
		}
	}
}

func TestVerifier(t *testing.T) {
	var v Verifier
	if _, err := io.CopyBuffer(&v, NewReader(1<<20+3), make([]byte, 999)); err != nil {
		t.Fatalf("clean stream: %v", err)
	}
	if v.Count() != 1<<20+3 {
		t.Fatalf("count = %d", v.Count())
	}
	b, _ := io.ReadAll(NewReader(4096))
	b[3000] ^= 1
	var bad Verifier
	if _, err := bad.Write(b); err == nil {
		t.Fatal("a flipped byte was not noticed")
	}
	// Swapped chunks must not pass.
	b, _ = io.ReadAll(NewReader(4096))
	var swapped Verifier
	if _, err := swapped.Write(append(append([]byte{}, b[2048:]...), b[:2048]...)); err == nil {
		t.Fatal("reordered chunks were not noticed")
	}
}

func TestCopyMovesEverything(t *testing.T) {
	var v Verifier
	n, err := Copy(&v, NewReader(1<<20+5), make([]byte, 4096))
	if err != nil || n != 1<<20+5 || v.Count() != 1<<20+5 {
		t.Fatalf("Copy = %d, %v; verified %d", n, err, v.Count())
	}
}

func TestVerifierNamesTheFirstBadByte(t *testing.T) {
	b, _ := io.ReadAll(NewReader(100000))
	b[70000] ^= 0x40
	var v Verifier
	n, err := v.Write(b)
	if err == nil || n != 70000 {
		t.Fatalf("Write = %d, %v; want 70000 and an error", n, err)
	}
	if !strings.Contains(err.Error(), "byte 70000") {
		t.Fatalf("error %q does not name byte 70000", err)
	}
}
