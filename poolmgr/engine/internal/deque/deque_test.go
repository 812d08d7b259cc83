package deque

import (
	"slices"
	"testing"
)

func contents(d *Deque[int]) []int {
	var s []int
	for i := 0; i < d.Len(); i++ {
		s = append(s, d.At(i))
	}
	return s
}

func TestDeque(t *testing.T) {
	var d Deque[int]
	if _, ok := d.PopBack(); ok {
		t.Fatal("PopBack on empty deque returned ok")
	}
	if _, ok := d.PopFront(); ok {
		t.Fatal("PopFront on empty deque returned ok")
	}
	for i := range 20 {
		d.PushBack(i)
	}
	if v, _ := d.PopFront(); v != 0 {
		t.Fatalf("PopFront = %d, want 0", v)
	}
	if v, _ := d.PopBack(); v != 19 {
		t.Fatalf("PopBack = %d, want 19", v)
	}
	d.Filter(func(v int) bool { return v%2 == 0 })
	want := []int{2, 4, 6, 8, 10, 12, 14, 16, 18}
	if got := contents(&d); !slices.Equal(got, want) {
		t.Fatalf("after Filter = %v, want %v", got, want)
	}
	// Wrap around the ring.
	for i := range 5 {
		d.PopFront()
		d.PushBack(100 + i)
	}
	want = []int{12, 14, 16, 18, 100, 101, 102, 103, 104}
	if got := contents(&d); !slices.Equal(got, want) {
		t.Fatalf("after wrap = %v, want %v", got, want)
	}
}

func TestDequeNoAllocSteadyState(t *testing.T) {
	var d Deque[*int]
	x := new(int)
	for range 8 {
		d.PushBack(x)
	}
	allocs := testing.AllocsPerRun(100, func() {
		v, _ := d.PopBack()
		d.PushBack(v)
		v, _ = d.PopFront()
		d.PushBack(v)
	})
	if allocs != 0 {
		t.Fatalf("allocs = %v, want 0", allocs)
	}
}
