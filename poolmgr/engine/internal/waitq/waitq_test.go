package waitq

import "testing"

func TestQueue(t *testing.T) {
	var q Queue[int]
	es := make([]Elem[int], 5)
	for i := range es {
		es[i].Value = i
		q.PushBack(&es[i])
	}
	if !q.Remove(&es[2]) || q.Remove(&es[2]) {
		t.Fatal("Remove of a queued element must succeed exactly once")
	}
	if !q.Remove(&es[4]) {
		t.Fatal("Remove of the tail failed")
	}
	var got []int
	for e := q.PopFront(); e != nil; e = q.PopFront() {
		got = append(got, e.Value)
	}
	if len(got) != 3 || got[0] != 0 || got[1] != 1 || got[2] != 3 {
		t.Fatalf("order = %v, want [0 1 3]", got)
	}
	if q.Len() != 0 {
		t.Fatalf("Len = %d, want 0", q.Len())
	}
	q.PushBack(&es[0]) // reusable after removal
	if q.Len() != 1 {
		t.Fatalf("Len = %d, want 1", q.Len())
	}
}
