// Package waitq is an intrusive FIFO queue with O(1) removal, used for the
// pool's acquire waiters: a waiter that gives up removes itself wherever it
// is. It is not safe for concurrent use; the pool guards it with its mutex.
package waitq

// Elem is a queue element; embed it (or keep one) in the queued value and
// set Value. An Elem is in at most one queue at a time.
type Elem[T any] struct {
	Value      T
	prev, next *Elem[T]
	q          *Queue[T]
}

// Queue is a FIFO of Elems. The zero value is an empty queue.
type Queue[T any] struct {
	head, tail *Elem[T]
	n          int
}

// Len returns the number of queued elements.
func (q *Queue[T]) Len() int { return q.n }

// Front returns the front element, or nil when empty.
func (q *Queue[T]) Front() *Elem[T] { return q.head }

// Next returns the element behind e in its queue, or nil.
func (e *Elem[T]) Next() *Elem[T] { return e.next }

// PushBack queues e at the back. It panics if e is already queued.
func (q *Queue[T]) PushBack(e *Elem[T]) {
	if e.q != nil {
		panic("waitq: internal error: element already queued")
	}
	e.q = q
	e.prev = q.tail
	e.next = nil
	if q.tail != nil {
		q.tail.next = e
	} else {
		q.head = e
	}
	q.tail = e
	q.n++
}

// PopFront removes and returns the front element, or nil when empty.
func (q *Queue[T]) PopFront() *Elem[T] {
	e := q.head
	if e != nil {
		q.Remove(e)
	}
	return e
}

// Remove takes e out of q and reports whether it was queued in q.
func (q *Queue[T]) Remove(e *Elem[T]) bool {
	if e.q != q {
		return false
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		q.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		q.tail = e.prev
	}
	e.prev, e.next, e.q = nil, nil, nil
	q.n--
	return true
}
