package redis

// stateless are the commands that leave nothing on the connection once
// answered: data commands on keys, and PING and friends. A lease that sent
// only these, with every reply read, needs no reset: the connection is as
// the pool's setup left it. Any other command (SELECT, MULTI, SUBSCRIBE,
// CLIENT, HELLO, EVAL, an unknown one...) makes the release reset the
// connection. Scripts are not here: before Redis 7, a script's SELECT
// changed its caller's database.
var stateless = func() map[string]struct{} {
	m := map[string]struct{}{}
	for _, c := range []string{
		// Strings and keys.
		"GET", "SET", "SETNX", "SETEX", "PSETEX", "GETSET", "GETDEL", "GETEX", "MGET", "MSET", "MSETNX",
		"APPEND", "STRLEN", "GETRANGE", "SETRANGE", "INCR", "INCRBY", "INCRBYFLOAT", "DECR", "DECRBY",
		"DEL", "UNLINK", "EXISTS", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "EXPIRETIME", "PEXPIRETIME",
		"TTL", "PTTL", "PERSIST", "TYPE", "TOUCH", "RENAME", "RENAMENX", "SCAN", "KEYS", "DBSIZE",
		"SETBIT", "GETBIT", "BITCOUNT", "BITPOS", "BITOP", "BITFIELD", "BITFIELD_RO", "LCS",
		// Hashes.
		"HGET", "HSET", "HSETNX", "HMGET", "HMSET", "HDEL", "HEXISTS", "HGETALL", "HKEYS", "HVALS", "HLEN",
		"HINCRBY", "HINCRBYFLOAT", "HSTRLEN", "HSCAN", "HRANDFIELD",
		// Lists (a blocking pop left unanswered is an outstanding reply).
		"LPUSH", "RPUSH", "LPUSHX", "RPUSHX", "LPOP", "RPOP", "LLEN", "LRANGE", "LINDEX", "LSET", "LREM",
		"LTRIM", "LINSERT", "LPOS", "LMOVE", "LMPOP", "RPOPLPUSH", "BLPOP", "BRPOP", "BLMOVE", "BLMPOP", "BRPOPLPUSH",
		// Sets.
		"SADD", "SREM", "SMEMBERS", "SISMEMBER", "SMISMEMBER", "SCARD", "SPOP", "SRANDMEMBER", "SINTER",
		"SINTERCARD", "SUNION", "SDIFF", "SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE", "SMOVE", "SSCAN",
		// Sorted sets.
		"ZADD", "ZREM", "ZRANGE", "ZREVRANGE", "ZRANGEBYSCORE", "ZREVRANGEBYSCORE", "ZRANGEBYLEX",
		"ZREVRANGEBYLEX", "ZRANK", "ZREVRANK", "ZSCORE", "ZMSCORE", "ZCARD", "ZCOUNT", "ZLEXCOUNT", "ZINCRBY",
		"ZPOPMIN", "ZPOPMAX", "ZMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "ZRANGESTORE", "ZSCAN",
		"ZREMRANGEBYSCORE", "ZREMRANGEBYRANK", "ZREMRANGEBYLEX", "ZRANDMEMBER", "ZUNION", "ZINTER", "ZDIFF",
		"ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE", "ZINTERCARD",
		// Streams (XREAD BLOCK left unanswered is an outstanding reply).
		"XADD", "XRANGE", "XREVRANGE", "XLEN", "XDEL", "XTRIM", "XREAD", "XREADGROUP", "XACK", "XCLAIM",
		"XAUTOCLAIM", "XPENDING",
		// HyperLogLog and geo.
		"PFADD", "PFCOUNT", "PFMERGE", "GEOADD", "GEODIST", "GEOPOS", "GEOHASH", "GEOSEARCH", "GEOSEARCHSTORE",
		// Connection-neutral.
		"PING", "ECHO", "TIME", "PUBLISH", "SPUBLISH",
	} {
		m[c] = struct{}{}
	}
	return m
}()

// isStateless reports whether the command name (any case) is in stateless,
// without allocating.
func isStateless(name []byte) bool {
	var up [24]byte
	if len(name) > len(up) {
		return false
	}
	for i, c := range name {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		up[i] = c
	}
	_, ok := stateless[string(up[:len(name)])]
	return ok
}
