package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The bench runs the client, the proxy and the upstream in separate
// processes. The upstream is this very binary, started again with the
// hidden command "upstream DIR": main (or, in tests, TestMain) hands such a
// process to upstreamMain before anything else runs.

// upstreamCommand is the hidden command that makes the process the bench's
// upstream.
const upstreamCommand = "upstream"

// childMain runs the process as the bench's upstream if args (without the
// program name) ask for it, and reports whether they did.
func childMain(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int, ok bool) {
	if len(args) == 0 || args[0] != upstreamCommand {
		return 0, false
	}
	if len(args) != 2 {
		_, _ = fmt.Fprintf(stderr, "bench upstream: want one argument, the directory of cert.pem and key.pem\n")
		return 2, true
	}
	return upstreamMain(args[1], stdin, stdout, stderr), true
}

// upstreamMain is the upstream process: a TCP echo and a TLS 1.3 echo on
// 127.0.0.1, with the certificate and key in dir. It prints "tcp=ADDR
// tls=ADDR" on stdout and serves until stdin ends (the bench closes it, or
// dies).
func upstreamMain(dir string, stdin io.Reader, stdout, stderr io.Writer) int {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "bench upstream: %v\n", err)
		return 1
	}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "bench upstream: %v\n", err)
		return 1
	}
	tlsTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "bench upstream: %v\n", err)
		return 1
	}
	tlsLn := tls.NewListener(tlsTCP, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	go serveEcho(tcpLn)
	go serveEcho(tlsLn)
	_, _ = fmt.Fprintf(stdout, "tcp=%s tls=%s\n", tcpLn.Addr(), tlsTCP.Addr())
	_, _ = io.Copy(io.Discard, stdin)
	return 0
}

// serveEcho echoes every accepted connection until the listener fails.
func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go echoConn(c)
	}
}

// echoConn writes back what it reads; on EOF it half-closes, so that a
// client's CloseWrite ends with its own EOF once every byte came back.
func echoConn(c net.Conn) {
	defer func() { _ = c.Close() }()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			}
			return
		}
	}
}

// benchCerts is the upstream's certificate, signed by a CA made for the run.
type benchCerts struct {
	caPEM   []byte
	roots   *x509.CertPool
	certPEM []byte
	keyPEM  []byte
}

// newBenchCerts generates a CA and a certificate for 127.0.0.1 and
// localhost (ECDSA P-256, as most TLS services use today).
func newBenchCerts() (*benchCerts, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "poolbench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &benchCerts{
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		roots:   roots,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// child is a process the bench started: the upstream, poold or HAProxy.
type child struct {
	name  string
	cmd   *exec.Cmd
	donec chan struct{} // closed once the process was waited for
	err   error         // Wait's result; read after donec closes

	mu   sync.Mutex // protects tail
	tail []string   // the last lines of its stderr
}

const childTailLines = 30

// startChild starts cmd with its stderr collected (and given to onLine, if
// set, line by line) and stdout left as the caller set it.
func startChild(name string, cmd *exec.Cmd, onLine func(string)) (*child, error) {
	c := &child{name: name, cmd: cmd, donec: make(chan struct{})}
	setChildAttrs(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.mu.Lock()
			c.tail = append(c.tail, line)
			if len(c.tail) > childTailLines {
				c.tail = c.tail[1:]
			}
			c.mu.Unlock()
			if onLine != nil {
				onLine(line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		c.err = cmd.Wait()
		close(c.donec)
	}()
	return c, nil
}

// pid returns the process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// exited reports whether the process has ended.
func (c *child) exited() bool {
	select {
	case <-c.donec:
		return true
	default:
		return false
	}
}

// stderrTail returns the last lines the process wrote to stderr.
func (c *child) stderrTail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.tail, "\n")
}

// failure describes a child that ended or misbehaved, with its last words.
func (c *child) failure(what string) error {
	msg := fmt.Sprintf("%s %s", c.name, what)
	if c.exited() && c.err != nil {
		msg += fmt.Sprintf(" (%v)", c.err)
	}
	if t := c.stderrTail(); t != "" {
		msg += ":\n" + t
	}
	return errors.New(msg)
}

// stop sends SIGTERM, waits up to grace, then kills. Idempotent.
func (c *child) stop(grace time.Duration) {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-c.donec:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.donec
	}
}

// upstreamProc is the echo upstream process.
type upstreamProc struct {
	*child
	stdin   io.WriteCloser
	tcpAddr string
	tlsAddr string
}

// startUpstream starts this binary again as the upstream.
func startUpstream(ctx context.Context, dir string, certs *benchCerts) (*upstreamProc, error) {
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), certs.certPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), certs.keyPEM, 0o600); err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable to run the upstream: %w", err)
	}
	cmd := exec.Command(exe, upstreamCommand, dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c, err := startChild("upstream", cmd, nil)
	if err != nil {
		return nil, err
	}
	u := &upstreamProc{child: c, stdin: stdin}
	linec := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		linec <- line
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-linec:
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "tcp="); ok {
				u.tcpAddr = v
			}
			if v, ok := strings.CutPrefix(f, "tls="); ok {
				u.tlsAddr = v
			}
		}
	case <-time.After(15 * time.Second):
	case <-ctx.Done():
	}
	if u.tcpAddr == "" || u.tlsAddr == "" {
		u.stop()
		return nil, u.failure("did not report its addresses")
	}
	return u, nil
}

// stop ends the upstream: closing stdin is its signal.
func (u *upstreamProc) stop() {
	_ = u.stdin.Close()
	u.child.stop(5 * time.Second)
}

// servingRE matches poold's "poold serving" log line (text or JSON).
var (
	servingListenRE  = regexp.MustCompile(`"?listen"?[=:]"?([0-9.]+:[0-9]+)`)
	servingMetricsRE = regexp.MustCompile(`"?metrics"?[=:]"?([0-9.]+:[0-9]+)`)
)

// pooldProc is the poold process.
type pooldProc struct {
	*child
	addr        string
	metricsAddr string
}

// findPoold returns the poold binary: flag if set, else poold next to this
// executable, else poold on PATH.
func findPoold(flag string) (string, error) {
	if flag != "" {
		p, err := exec.LookPath(flag)
		if err != nil {
			return "", fmt.Errorf("--poold %s: %w", flag, err)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "poold")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath("poold"); err == nil {
		return p, nil
	}
	return "", errors.New("poold not found next to poolbench nor on PATH: run 'make build' " +
		"(bin/poold and bin/poolbench) and use bin/poolbench, or pass --poold PATH")
}

// startPoold starts poold on loopback ports of its choosing with a fresh
// data directory and waits until it serves.
func startPoold(ctx context.Context, path, dataDir string, pprof bool, maxProcs int) (*pooldProc, error) {
	args := []string{
		"--listen", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0",
		"--data-dir", dataDir,
		"--shutdown-grace", "2s",
	}
	if pprof {
		args = append(args, "--pprof")
	}
	if maxProcs > 0 {
		args = append(args, "--max-procs", strconv.Itoa(maxProcs))
	}
	cmd := exec.Command(path, args...)
	readyc := make(chan [2]string, 1)
	var once sync.Once
	c, err := startChild("poold", cmd, func(line string) {
		if !strings.Contains(line, "poold serving") {
			return
		}
		var addrs [2]string
		if m := servingListenRE.FindStringSubmatch(line); m != nil {
			addrs[0] = m[1]
		}
		if m := servingMetricsRE.FindStringSubmatch(line); m != nil {
			addrs[1] = m[1]
		}
		once.Do(func() { readyc <- addrs })
	})
	if err != nil {
		return nil, err
	}
	p := &pooldProc{child: c}
	select {
	case addrs := <-readyc:
		p.addr, p.metricsAddr = addrs[0], addrs[1]
	case <-c.donec:
	case <-time.After(15 * time.Second):
	case <-ctx.Done():
	}
	if p.addr == "" {
		p.stop(5 * time.Second)
		return nil, p.failure("did not start serving")
	}
	return p, nil
}

// haproxyProc is the HAProxy process.
type haproxyProc struct {
	*child
	addr    string
	version string
}

// findHAProxy returns the haproxy binary, or "" with a note saying why the
// HAProxy cases are skipped.
func findHAProxy(flag string) (path, note string) {
	if flag == "" || flag == "off" {
		return "", "HAProxy cases skipped: --haproxy off"
	}
	p, err := exec.LookPath(flag)
	if err != nil {
		return "", fmt.Sprintf("HAProxy cases skipped: %s not found (install haproxy or pass --haproxy PATH)", flag)
	}
	return p, ""
}

// freePort returns a loopback address that was free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// startHAProxy starts HAProxy in TCP mode in front of upstream, in the
// foreground (so that its PID is the process that relays), and waits until
// it accepts connections.
func startHAProxy(ctx context.Context, path, dir, upstream string) (*haproxyProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`# written by poolbench
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m

frontend bench
    bind %s
    default_backend echo

backend echo
    server echo %s
`, addr, upstream)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	version := ""
	if out, err := exec.Command(path, "-v").Output(); err == nil {
		version, _, _ = strings.Cut(string(bytes.TrimSpace(out)), "\n")
	}
	c, err := startChild("haproxy", exec.Command(path, "-db", "-f", cfgPath), nil)
	if err != nil {
		return nil, err
	}
	h := &haproxyProc{child: c, addr: addr, version: version}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = conn.Close()
			return h, nil
		}
		if h.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			h.stop(2 * time.Second)
			return nil, h.failure("did not start accepting on " + addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procs are the processes a bench or a soak runs against: the upstream
// (plain TCP and TLS) and poold, and the certificates the upstream serves.
type procs struct {
	certs   *benchCerts
	tlsConf *tls.Config // trusts the upstream's certificate
	up      *upstreamProc
	poold   *pooldProc
	// maxProcs is poold's --max-procs, set before start (0: its default).
	maxProcs int
}

// start makes the certificates, then starts the upstream and poold (from
// pooldPath, its data in dir, with profiling if asked). stop stops what
// started, also after an error.
func (p *procs) start(ctx context.Context, dir, pooldPath string, profile bool) error {
	var err error
	if p.certs, err = newBenchCerts(); err != nil {
		return fmt.Errorf("bench: certificates: %w", err)
	}
	p.tlsConf = &tls.Config{RootCAs: p.certs.roots, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if p.up, err = startUpstream(ctx, dir, p.certs); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if p.poold, err = startPoold(ctx, pooldPath, filepath.Join(dir, "data"), profile, p.maxProcs); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// procsNote says how many threads run poold's Go code, for the reports.
func procsNote(maxProcs int) string {
	if maxProcs > 0 {
		return fmt.Sprintf("--max-procs %d", maxProcs)
	}
	return "--max-procs default: one per CPU"
}

// stop stops poold, then the upstream: whichever started.
func (p *procs) stop() {
	if p.poold != nil {
		p.poold.stop(10 * time.Second)
	}
	if p.up != nil {
		p.up.stop()
	}
}
