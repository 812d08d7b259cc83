package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/poolplane/poolplane/client"
	"github.com/poolplane/poolplane/internal/testkit"
	"github.com/poolplane/poolplane/poolmgr"
)

// startWeb starts nginx with a small site: /small.txt ("hello"), /big.bin
// (1 MiB), /page.txt (text nginx gzips, so chunked), /post (answers
// "posted"), /slow/file.bin (sent at 8 KiB/s). Every response carries
// X-Conn, nginx's serial number of the connection it came on.
func startWeb(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	files := map[string][]byte{
		"small.txt":     []byte("hello"),
		"big.bin":       big,
		"page.txt":      bytes.Repeat([]byte("a line of text the server compresses\n"), 20000),
		"slow/file.bin": make([]byte, 256<<10),
	}
	for name, b := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return testkit.Nginx(t, root, `
		add_header X-Conn $connection always;
		gzip on;
		gzip_min_length 1;
		gzip_types text/plain;
		location = /post { return 200 "posted"; }
		location /slow/ { limit_rate 8k; }
	`)
}

// httpClient speaks HTTP/1.1 by hand over a leased connection.
type httpClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func (c *httpClient) send(req string) {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// read reads the final response to a request of method, skipping 1xx,
// with its whole body.
func (c *httpClient) read(method string) (*http.Response, string) {
	c.t.Helper()
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
		if err != nil {
			c.t.Fatalf("read response: %v", err)
		}
		if resp.StatusCode >= 200 {
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				c.t.Fatalf("read body: %v", err)
			}
			return resp, string(body)
		}
	}
}

func get(path string, headers ...string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: web\r\n" + strings.Join(headers, "") + "\r\n"
}

// TestHTTPPoolIsolatesClients runs, against a real nginx through an HTTP1
// pool of one connection, each way client A can leave a connection, then
// client B's request on the next lease: B reads its own response and
// nothing of A's. Where the connection stands at a boundary (after the pool
// drained what A left), B gets the same nginx connection; where it cannot,
// the connection is closed and counted under its reason. 30 trials each.
func TestHTTPPoolIsolatesClients(t *testing.T) {
	for _, f := range fronts {
		t.Run(f.name, func(t *testing.T) { testHTTPPoolIsolatesClients(t, f) })
	}
}

func testHTTPPoolIsolatesClients(t *testing.T, f front) {
	addr := startWeb(t)
	e := startSDKEnv(t, client.WithReleaseTimeout(10*time.Second)) // a loaded machine may pause a write past the default
	for pool, reset := range map[string]time.Duration{"web": 5 * time.Second, "web-short": 100 * time.Millisecond} {
		e.createPool(t, pool, poolmgr.Config{
			Endpoints:    []string{addr},
			Limits:       poolmgr.Limits{MaxConnections: 1},
			Protocol:     poolmgr.ProtocolHTTP1,
			ResetTimeout: reset,
			Listeners:    localListener,
		})
	}
	lease := func(t *testing.T, pool string) (net.Conn, *httpClient) {
		t.Helper()
		conn := f.dial(t, e, pool)
		// Released at once by the test; this release is for a trial that
		// fails first (the pool has one connection).
		t.Cleanup(func() { _ = conn.Close() })
		return conn, &httpClient{t: t, nc: conn, br: bufio.NewReader(conn)}
	}
	// The ETag of /small.txt, for a conditional GET.
	_, probe := lease(t, "web")
	probe.send(get("/small.txt"))
	first, _ := probe.read("GET")
	etag := first.Header.Get("ETag")
	if err := probe.nc.Close(); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		leave  func(a *httpClient)
		closed string // the close reason, or "" when B must get the same connection
	}{
		{name: "complete exchange", leave: func(a *httpClient) {
			a.send(get("/small.txt"))
			a.read("GET")
		}},
		{name: "response half read", leave: func(a *httpClient) {
			a.send(get("/big.bin"))
			if _, err := a.br.Peek(4096); err != nil {
				a.t.Fatal(err)
			}
		}},
		{name: "pipelined requests unread", leave: func(a *httpClient) {
			a.send(strings.Repeat(get("/small.txt"), 5) + get("/big.bin"))
		}},
		{name: "client half-closed after two pipelined requests", leave: func(a *httpClient) {
			// Both responses reach the client, then its EOF; nginx is not
			// told, and the pool keeps the connection.
			a.send(get("/small.txt") + get("/page.txt"))
			if err := a.nc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				a.t.Fatal(err)
			}
			a.read("GET")
			a.read("GET")
			if b, err := io.ReadAll(a.br); err != nil || len(b) != 0 {
				a.t.Fatalf("after both responses: %q, %v; want EOF", b, err)
			}
		}},
		{name: "HEAD", leave: func(a *httpClient) {
			a.send("HEAD /big.bin HTTP/1.1\r\nHost: web\r\n\r\n")
			a.read("HEAD")
		}},
		{name: "HEAD unread", leave: func(a *httpClient) { a.send("HEAD /big.bin HTTP/1.1\r\nHost: web\r\n\r\n") }},
		{name: "304 unread", leave: func(a *httpClient) {
			a.send(get("/small.txt", "If-None-Match: "+etag+"\r\n"))
		}},
		{name: "chunked half read", leave: func(a *httpClient) {
			a.send(get("/page.txt", "Accept-Encoding: gzip\r\n"))
			if _, err := a.br.Peek(600); err != nil {
				a.t.Fatal(err)
			}
		}},
		{name: "100-continue", leave: func(a *httpClient) {
			a.send("POST /post HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello")
			if _, body := a.read("POST"); body != "posted" {
				a.t.Fatalf("POST answered %q", body)
			}
		}},
		{name: "100-continue, body never sent", closed: "not_resettable", leave: func(a *httpClient) {
			a.send("POST /post HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
		}},
		// nginx closes the connection after its response: closed by the
		// server or by the pool at release, whichever comes first.
		{name: "Connection: close", closed: "any", leave: func(a *httpClient) {
			a.send(get("/small.txt", "Connection: close\r\n"))
		}},
		{name: "Upgrade", closed: "not_resettable", leave: func(a *httpClient) {
			a.send(get("/small.txt", "Connection: Upgrade\r\nUpgrade: websocket\r\n"))
		}},
		{name: "request half sent", closed: "not_resettable", leave: func(a *httpClient) {
			a.send("GET /small.txt HTTP/1.1\r\nHost: we")
		}},
		{name: "slow response abandoned", closed: "outstanding_reply", leave: func(a *httpClient) {
			a.send(get("/slow/file.bin"))
			if _, err := a.br.Peek(1); err != nil {
				a.t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pool := "web"
			if tc.closed != "" {
				pool = "web-short"
			}
			for trial := range 30 {
				before := closes(t, e, pool, tc.closed)
				connA, a := lease(t, pool)
				a.send(get("/small.txt"))
				respA, _ := a.read("GET")
				idA := respA.Header.Get("X-Conn")
				tc.leave(a)
				if err := connA.Close(); err != nil {
					t.Fatalf("A's Close: %v", err)
				}
				connB, b := lease(t, pool)
				b.send(get("/small.txt"))
				resp, body := b.read("GET")
				if err := connB.Close(); err != nil {
					t.Fatalf("B's Close: %v", err)
				}
				if resp.StatusCode != 200 || body != "hello" {
					t.Fatalf("trial %d: B got %s %q: not its own response", trial, resp.Status, body)
				}
				idB := resp.Header.Get("X-Conn")
				switch {
				case tc.closed == "" && idB != idA:
					t.Fatalf("trial %d: B came on nginx connection %s, A on %s: the pool lost a connection it could keep", trial, idB, idA)
				case tc.closed != "" && idB == idA:
					t.Fatalf("trial %d: B got A's connection %s; want it closed (%s)", trial, idA, tc.closed)
				case tc.closed != "":
					if after := closes(t, e, pool, tc.closed); after != before+1 {
						t.Fatalf("trial %d: closes[%s] went %d -> %d, want +1", trial, tc.closed, before, after)
					}
				}
			}
		})
	}
}

// TestHTTPPoolNetHTTP drives an HTTP1 pool with net/http through
// client.Dialer, its requests cancelled mid-response and its bodies left
// half read: every response a request gets is its own, and the pool keeps
// its connections (net/http closes a connection it abandons; the pool
// drains it and hands it to the next dial).
func TestHTTPPoolNetHTTP(t *testing.T) {
	addr := startWeb(t)
	e := startSDKEnv(t, client.WithReleaseTimeout(10*time.Second)) // a loaded machine may pause a write past the default
	e.createPool(t, "web", poolmgr.Config{
		Endpoints:    []string{addr},
		Limits:       poolmgr.Limits{MaxConnections: 2},
		Protocol:     poolmgr.ProtocolHTTP1,
		ResetTimeout: 5 * time.Second,
	})
	tr := &http.Transport{DialContext: e.c.Dialer("web"), MaxConnsPerHost: 2, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	ctx := ctxSDK(t)
	do := func(ctx context.Context, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://web"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return hc.Do(req)
	}
	for trial := range 30 {
		// A body left half read and closed: net/http closes the connection.
		resp, err := do(ctx, "/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, resp.Body, 1000); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// A request cancelled mid-response.
		short, cancel := context.WithCancel(ctx)
		resp, err = do(short, "/big.bin")
		if err == nil {
			_, _ = io.CopyN(io.Discard, resp.Body, 100)
			cancel()
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
		// The next request reads its own response.
		resp, err = do(ctx, "/small.txt")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "hello" {
			t.Fatalf("trial %d: GET /small.txt = %q, %v", trial, body, err)
		}
	}
	st, err := e.c.PoolStats(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if st.GetReused() == 0 || st.GetCreated() > 2 {
		t.Fatalf("created %d, reused %d (closes %v): want the pool's 2 connections kept and reused", st.GetCreated(), st.GetReused(), st.GetCloses())
	}
	t.Logf("90 requests, a third cut short: %d connections created, %d leases reused one; closes %v", st.GetCreated(), st.GetReused(), st.GetCloses())
}
