package main

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/poolplane/poolplane/internal/unixsock"
	"github.com/poolplane/poolplane/poolmgr"
)

// This file holds poold's exposure rules: what a listener reachable from
// other hosts needs (docs/security.md), and how the listeners are opened.

// localOnly reports whether a listen address is reachable from this host
// only: a unix:// socket, "localhost" or a loopback IP. ":7700" and
// "0.0.0.0:7700" are not.
func localOnly(addr string) (bool, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		if path == "" {
			return false, errors.New("unix:// needs a path")
		}
		return true, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}

// checkListen refuses a listen address reachable from other hosts unless
// it has both TLS and authentication, or insecure is set.
func checkListen(addr string, insecure, hasTLS, hasAuth bool) error {
	local, err := localOnly(addr)
	if err != nil {
		return &usageError{fmt.Sprintf("--listen %q: %v", addr, err)}
	}
	if local || insecure || (hasTLS && hasAuth) {
		return nil
	}
	var missing []string
	if !hasTLS {
		missing = append(missing, "TLS (--tls-cert, --tls-key)")
	}
	if !hasAuth {
		missing = append(missing, "authentication (--auth-file)")
	}
	return &usageError{fmt.Sprintf("--listen %s is reachable from other hosts, and poold would serve it without %s: "+
		"anyone who reaches it could reconfigure pools and tunnel through them; give --tls-cert, --tls-key and --auth-file, "+
		"listen on 127.0.0.1 or a unix:// socket, or pass --insecure to accept the risk", addr, strings.Join(missing, " or "))}
}

// checkAllowUpstream refuses a --listen reachable from other hosts without
// --allow-upstream: there, every principal allowed to write pools could
// otherwise make poold dial this host's loopback services, private ranges
// and the internet. "--allow-upstream any" states that choice explicitly.
// The permissive default stays for loopback and unix:// listeners, the
// development setup.
func checkAllowUpstream(listen string, allow []string) error {
	if local, err := localOnly(listen); err != nil || local || len(allow) > 0 {
		return nil // a bad --listen is checkListen's to report
	}
	return &usageError{fmt.Sprintf("--listen %s is reachable from other hosts, and no --allow-upstream is given: "+
		"whoever may write pools could make poold reach this host's loopback services, private networks and the internet; "+
		"list what pools may reach (--allow-upstream 10.0.0.0/8,*.internal:443), or pass --allow-upstream %s to accept any upstream but "+
		"link-local and metadata addresses", listen, poolmgr.AllowAny)}
}

// metricsExposure is how the metrics listener is served.
type metricsExposure struct {
	tls   bool // HTTPS with the --tls-cert certificate
	mtls  bool // and a client certificate verified against --tls-client-ca is required
	wide  bool // reachable from other hosts
	pprof bool // /debug/pprof is served
}

// checkMetricsListen applies --listen's rule to --metrics-listen: beyond
// loopback, /metrics (which names every pool) needs TLS with client
// certificates (--tls-cert, --tls-key, --tls-client-ca: scrapers present
// a certificate the CA signed) or --insecure; /debug/pprof never listens
// beyond loopback without --insecure.
func checkMetricsListen(o options) (metricsExposure, error) {
	e := metricsExposure{pprof: o.pprof}
	local, err := localOnly(o.metricsListen)
	if err == nil && strings.HasPrefix(o.metricsListen, "unix://") {
		err = errors.New("the metrics listener takes host:port")
	}
	if err != nil {
		return e, &usageError{fmt.Sprintf("--metrics-listen %q: %v", o.metricsListen, err)}
	}
	if local {
		return e, nil
	}
	e.wide = true
	e.tls = o.tlsCert != ""
	e.mtls = e.tls && o.tlsClientCA != ""
	switch {
	case o.pprof && !o.insecure:
		return e, &usageError{fmt.Sprintf("--metrics-listen %s is reachable from other hosts, and --pprof would serve profiles, "+
			"command line and goroutine stacks there: keep --pprof on a loopback --metrics-listen, or pass --insecure to accept the risk", o.metricsListen)}
	case e.mtls || o.insecure:
		return e, nil
	}
	return e, &usageError{fmt.Sprintf("--metrics-listen %s is reachable from other hosts, and poold would serve it without "+
		"TLS and client certificates: anyone who reaches it could read every pool's name and statistics; give --tls-cert, --tls-key "+
		"and --tls-client-ca (scrapers then present a client certificate), listen on 127.0.0.1, or pass --insecure to accept the risk", o.metricsListen)}
}

// openAPIListener opens the gRPC listener: TCP, or a unix socket with mode 0660.
func openAPIListener(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		return unixsock.Listen(path, 0o660, "")
	}
	return net.Listen("tcp", addr)
}

// checkExposure applies every exposure rule to the settings: --listen,
// --allow-upstream and --metrics-listen.
func checkExposure(o *options) error {
	if err := checkListen(o.listen, o.insecure, o.tlsCert != "", o.authFile != ""); err != nil {
		return err
	}
	if err := checkAllowUpstream(o.listen, o.allowUpstream); err != nil {
		return err
	}
	if o.metricsListen == "off" || o.metricsListen == "" {
		return nil
	}
	_, err := checkMetricsListen(*o)
	return err
}
