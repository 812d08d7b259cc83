//go:build !unix

package engine

// peekSupported is false: without MSG_DONTWAIT, idle connections are not
// peeked (health checks of kind HTTP/REDIS_PING still catch dead ones).
const peekSupported = false

func (c *Conn) peekSocket(fd uintptr) bool { return true }
