package leasewire

import "sync"

// TieredPool is a pool of byte buffers in a few sizes, with the methods of
// gRPC's mem.BufferPool, shared by the SDK (gRPC's receive buffers) and the
// server (gRPC's receive buffers and the relay's upstream reads). Unlike
// grpc-go's default pool it does not zero a buffer it hands out: each user
// writes over the whole of it (that zeroing was about 2% of the CPU of a
// bulk transfer). A buffer larger than the largest size is allocated and
// not kept. Safe for concurrent use.
type TieredPool struct {
	sizes []int
	pools []sync.Pool
}

// NewTieredPool returns a pool of buffers of the given sizes, ascending.
func NewTieredPool(sizes ...int) *TieredPool {
	for i := 1; i < len(sizes); i++ {
		if sizes[i] <= sizes[i-1] {
			panic("leasewire: internal error: TieredPool sizes must ascend")
		}
	}
	return &TieredPool{sizes: sizes, pools: make([]sync.Pool, len(sizes))}
}

// Get returns a buffer of length n.
func (p *TieredPool) Get(n int) *[]byte {
	for i, size := range p.sizes {
		if n <= size {
			if bp, ok := p.pools[i].Get().(*[]byte); ok {
				*bp = (*bp)[:n]
				return bp
			}
			b := make([]byte, n, size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

// Put returns a buffer from Get; one of another capacity is dropped.
func (p *TieredPool) Put(bp *[]byte) {
	c := cap(*bp)
	for i, size := range p.sizes {
		if c == size {
			p.pools[i].Put(bp)
			return
		}
	}
}
