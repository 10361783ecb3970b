package upstream

import "testing"

// The progress line never counts past its total (it once printed
// "compiled 435/367 packages": the standard library was not counted).
func TestProgressNeverPassesItsTotal(t *testing.T) {
	for _, c := range []struct {
		done, total int
		want        string
	}{
		{10, 367, "compiled 10/367 packages"},
		{367, 367, "compiled 367/367 packages"},
		{435, 367, "compiled 435 packages"},
		{5, 0, "compiled 5 packages"},
	} {
		if got := progress(c.done, c.total); got != c.want {
			t.Errorf("progress(%d, %d) = %q, want %q", c.done, c.total, got, c.want)
		}
	}
}
