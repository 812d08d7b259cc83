// Package deque is a ring-buffer double-ended queue used for the pool's idle
// set: LIFO pops from the back, FIFO from the front, and the maintenance
// sweep filters in place. It is not safe for concurrent use; the pool guards
// it with its mutex.
package deque

// Deque is a growable ring buffer. The zero value is an empty deque.
// Once grown to its working size it never allocates again.
type Deque[T any] struct {
	buf  []T
	head int // index of the front element
	n    int // number of elements
}

// Len returns the number of elements.
func (d *Deque[T]) Len() int { return d.n }

// PushBack appends v at the back.
func (d *Deque[T]) PushBack(v T) {
	if d.n == len(d.buf) {
		d.grow()
	}
	d.buf[(d.head+d.n)%len(d.buf)] = v
	d.n++
}

// PopBack removes and returns the back element; ok is false when empty.
func (d *Deque[T]) PopBack() (v T, ok bool) {
	if d.n == 0 {
		return v, false
	}
	i := (d.head + d.n - 1) % len(d.buf)
	v = d.buf[i]
	var zero T
	d.buf[i] = zero
	d.n--
	return v, true
}

// PopFront removes and returns the front element; ok is false when empty.
func (d *Deque[T]) PopFront() (v T, ok bool) {
	if d.n == 0 {
		return v, false
	}
	v = d.buf[d.head]
	var zero T
	d.buf[d.head] = zero
	d.head = (d.head + 1) % len(d.buf)
	d.n--
	return v, true
}

// At returns the i-th element from the front, 0 <= i < Len().
func (d *Deque[T]) At(i int) T {
	if i < 0 || i >= d.n {
		panic("deque: index out of range")
	}
	return d.buf[(d.head+i)%len(d.buf)]
}

// Filter keeps, in order, the elements for which keep returns true and
// removes the others.
func (d *Deque[T]) Filter(keep func(T) bool) {
	var zero T
	w := 0
	for r := 0; r < d.n; r++ {
		v := d.buf[(d.head+r)%len(d.buf)]
		if keep(v) {
			d.buf[(d.head+w)%len(d.buf)] = v
			w++
		}
	}
	for i := w; i < d.n; i++ {
		d.buf[(d.head+i)%len(d.buf)] = zero
	}
	d.n = w
}

func (d *Deque[T]) grow() {
	nb := make([]T, max(8, 2*len(d.buf)))
	for i := 0; i < d.n; i++ {
		nb[i] = d.buf[(d.head+i)%len(d.buf)]
	}
	d.buf = nb
	d.head = 0
}
