package server

import "time"

// SetGrantHold sets how long granted waits for the reply to a request that
// rode in the open, for tests that count messages and must not depend on
// the machine's speed.
func (s *LeaseServer) SetGrantHold(d time.Duration) { s.grantHold.Store(int64(d)) }
