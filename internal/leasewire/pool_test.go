package leasewire

import "testing"

func TestTieredPool(t *testing.T) {
	p := NewTieredPool(4<<10, 16<<10, 32<<10)
	for _, n := range []int{0, 1, 4 << 10, 4<<10 + 1, 16 << 10, 32 << 10, 32<<10 + 1, 1 << 20} {
		bp := p.Get(n)
		if len(*bp) != n {
			t.Fatalf("Get(%d): len %d", n, len(*bp))
		}
		want := n // not pooled: exactly its size
		for _, size := range p.sizes {
			if n <= size {
				want = size
				break
			}
		}
		if cap(*bp) != want {
			t.Fatalf("Get(%d): cap %d, want %d", n, cap(*bp), want)
		}
		p.Put(bp)
	}
	// A buffer of a foreign capacity is dropped, not handed out again.
	b := make([]byte, 10, 100)
	p.Put(&b)
	if bp := p.Get(10); cap(*bp) != 4<<10 {
		t.Fatalf("Get after a foreign Put: cap %d", cap(*bp))
	}
}
