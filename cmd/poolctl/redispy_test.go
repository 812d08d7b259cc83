package main

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"

	"github.com/poolplane/poolplane/internal/testkit"
)

// pythonWith returns a Python 3 interpreter that can import module, or
// skips the test: the one on PATH, else Debian's /usr/bin/python3 (where
// apt-get install python3-<module> puts it).
func pythonWith(t testing.TB, module, pkg string) string {
	t.Helper()
	for _, py := range []string{"python3", "/usr/bin/python3"} {
		p, err := exec.LookPath(py)
		if err != nil {
			continue
		}
		if exec.Command(p, "-c", "import "+module).Run() == nil {
			return p
		}
	}
	t.Skipf("no python3 with the %s module: install it (apt-get install %s) to run this test", module, pkg)
	return ""
}

// redisPyScript runs redis-py's own connection pool (4 connections, each a
// lease) over many threads: each thread takes a database with SELECT
// (redis-py's db=), a client name, and leaves a transaction and a
// subscription behind on some of its connections, then checks that every
// reply it reads is its own. It prints "ok <n>" with the commands checked.
const redisPyScript = `
import sys, threading, redis
host, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors, count = [], [0]
lock = threading.Lock()
def worker(w):
    try:
        for n in range(rounds):
            db = (w + n) % 4
            r = redis.Redis(host=host, port=port, db=db, client_name="w%d" % w, socket_timeout=20)
            key = "py:%d:%d" % (w, n)
            r.set(key, "v%d" % db)
            assert r.get(key) == ("v%d" % db).encode(), "get in db %d" % db
            assert r.client_getname() == "w%d" % w
            p = r.pipeline(transaction=True)
            p.incr("py:counter:%d" % w)
            p.get(key)
            res = p.execute()
            assert res[1] == ("v%d" % db).encode(), res
            if n % 3 == 0:
                ps = r.pubsub()
                ps.subscribe("py:news")
                ps.get_message(timeout=1)
                ps.close()
            if n % 4 == 1:
                c = r.connection_pool.get_connection("MULTI")
                c.send_command("MULTI")
                c.read_response()
                c.send_command("SET", key, "from-an-abandoned-multi")
                c.read_response()
                c.disconnect()
            r.close()
            r.connection_pool.disconnect()
            with lock:
                count[0] += 4
    except Exception as e:
        with lock:
            errors.append("worker %d: %r" % (w, e))
threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok", count[0])
`

// TestRedisPy: the real redis-py (Debian's python3-redis), eight threads
// of connections that each SELECT a database, set a name and leave
// transactions and subscriptions behind, through each front on a REDIS
// pool of 4 connections. Every reply is the thread's own: a connection
// goes back to the pool reset, and a key set in one database is never
// read from another.
func TestRedisPy(t *testing.T) {
	py := pythonWith(t, "redis", "python3-redis")
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) {
			ts := startServer(t)
			redis := testkit.Redis(t)
			ts.ok(t, "pools:\n- id: py\n  endpoints: ["+redis+"]\n  protocol: redis\n  limits: {max_connections: 4, acquire_timeout: 20s}\n", "apply", "-f", "-")
			addr, stop := f.open(t, ts, "py")
			host, port, _ := strings.Cut(addr, ":")
			const rounds = 12
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, py, "-c", redisPyScript, host, port, strconv.Itoa(rounds)).CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "ok "+strconv.Itoa(8*rounds*4) {
				t.Fatalf("redis-py: %v\n%s", err, out)
			}
			ts.waitNoLeases(t, "py")
			st := unmarshal(t, ts.ok(t, "", "stats", "py", "-o", "json"), &poolv1.PoolStats{})
			t.Logf("dials %d created %d reused %d acquires %d closes %v", st.GetDials(), st.GetCreated(), st.GetReused(), st.GetAcquires(), st.GetCloses())
			if st.GetDials() > 4 || st.GetReused() == 0 {
				t.Fatalf("dials %d reused %d: want at most the pool's 4 connections, reused", st.GetDials(), st.GetReused())
			}
			stop()
		})
	}
}
