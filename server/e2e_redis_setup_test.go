package server_test

import (
	"bufio"
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	poolv1 "github.com/poolplane/poolplane/gen/poolplane/v1"
	"github.com/poolplane/poolplane/poolmgr"
)

// TestRedisPoolSetupAndGrantedProtocol: a REDIS pool with a password and a
// database authenticates and SELECTs on its own, so a client that knows no
// password reaches the upstream; the lease says the pool's protocol.
func TestRedisPoolSetupAndGrantedProtocol(t *testing.T) {
	addr := startRedis(t)
	const password = "upstream-only-pw"
	admin, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rd := bufio.NewReader(admin)
	if got := redisDo(t, admin, rd, "CONFIG", "SET", "requirepass", password); got != "+OK" {
		t.Fatalf("CONFIG SET requirepass: %q", got)
	}
	_ = admin.Close()

	e := startSDKEnvWith(t, sdkEnvConfig{manager: func(c *poolmgr.ManagerConfig) { c.SecretKey = bytes.Repeat([]byte{4}, 32) }})
	e.createPool(t, "cache", poolmgr.Config{
		Endpoints: []string{addr},
		Protocol:  poolmgr.ProtocolRedis,
		Redis:     poolmgr.RedisSetup{Password: password, Database: 5},
	})
	e.createPool(t, "raw", poolmgr.Config{Endpoints: []string{addr}})
	ctx := ctxSDK(t)

	c, err := e.c.Lease(ctx, "cache")
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Info().Protocol; p != poolv1.Protocol_PROTOCOL_REDIS {
		t.Fatalf("granted protocol = %v, want REDIS", p)
	}
	r := bufio.NewReader(c)
	if got := redisDo(t, c, r, "CLIENT", "INFO"); !strings.Contains(got, " db=5 ") {
		t.Fatalf("CLIENT INFO on the pool's connection: %q, want db=5 (setup ran)", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := e.c.Lease(ctx, "raw")
	if err != nil {
		t.Fatal(err)
	}
	if p := raw.Info().Protocol; p != poolv1.Protocol_PROTOCOL_RAW {
		t.Fatalf("granted protocol of a RAW pool = %v", p)
	}
	if got := redisDo(t, raw, bufio.NewReader(raw), "PING"); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("PING on a RAW pool without credentials: %q, want NOAUTH", got)
	}
	_ = raw.Discard()
}

// redisDo sends one command and returns its reply's first line, or for a
// bulk string its body.
func redisDo(t *testing.T, w net.Conn, r *bufio.Reader, args ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	_ = w.SetDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = w.SetDeadline(time.Time{}) }()
	if _, err := w.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "$") && line != "$-1" {
		body, err := r.ReadString('\n')
		for err == nil && len(body) < bulkLen(line)+2 {
			var more string
			more, err = r.ReadString('\n')
			body += more
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(body, "\r\n")
	}
	return line
}

func bulkLen(line string) int {
	n, _ := strconv.Atoi(line[1:])
	return n
}
