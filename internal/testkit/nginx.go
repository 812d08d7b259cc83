package testkit

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Nginx starts a throwaway nginx serving root (a directory of files) on a
// free loopback port, with server-block directives appended (locations,
// headers), and returns its address. It skips the test when nginx is not
// installed. The server is killed at cleanup.
func Nginx(t testing.TB, root, server string) string {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			t.Skip("nginx not found in PATH or /usr/sbin: install it (apt-get install nginx) to run the tests against a real HTTP server")
		}
		bin = "/usr/sbin/nginx"
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	dir := t.TempDir()
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 512; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	keepalive_requests 100000000;
	keepalive_timeout 300s;
	default_type application/octet-stream;
	server {
		listen %[2]s;
		root %[3]s;
		%[4]s
	}
}
`, dir, addr, root, server)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath)
	runServer(t, "nginx on "+addr, cmd, filepath.Join(dir, "error.log"), func() bool { return accepts(addr) })
	return addr
}
