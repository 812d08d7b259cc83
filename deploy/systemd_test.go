package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const unitFile = "systemd/poold.service"

// parseUnit returns the settings of a unit file's [Service] section, each
// key with its values in order.
func parseUnit(t *testing.T, file string) map[string][]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	service := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not key=value", file, line)
			}
			service[k] = append(service[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return service
}

// TestSystemdUnit checks the hardening the unit promises, and that every
// POOLPLANE_ variable it sets or suggests is one of poold's flags.
func TestSystemdUnit(t *testing.T) {
	s := parseUnit(t, unitFile)
	want := map[string]string{
		"NoNewPrivileges":         "yes",
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"PrivateDevices":          "yes",
		"ProtectKernelTunables":   "yes",
		"ProtectKernelModules":    "yes",
		"ProtectControlGroups":    "yes",
		"RestrictSUIDSGID":        "yes",
		"RestrictNamespaces":      "yes",
		"MemoryDenyWriteExecute":  "yes",
		"CapabilityBoundingSet":   "",
		"AmbientCapabilities":     "",
		"StateDirectory":          "poolplane",
		"RuntimeDirectory":        "poolplane",
		"UMask":                   "0077",
		"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		"KillSignal":              "SIGTERM",
	}
	for k, v := range want {
		got, ok := s[k]
		if !ok || got[len(got)-1] != v {
			t.Errorf("%s: %s=%q, want %q", unitFile, k, got, v)
		}
	}
	if u := s["User"]; len(u) != 1 || u[0] == "" || u[0] == "root" || u[0] == "0" {
		if d := s["DynamicUser"]; len(d) == 0 || d[0] != "yes" {
			t.Errorf("%s: runs as root (User=%q)", unitFile, u)
		}
	}
	if !strings.HasPrefix(strings.Join(s["ExecStart"], ""), "/usr/local/bin/poold") {
		t.Errorf("%s: ExecStart=%q, want /usr/local/bin/poold", unitFile, s["ExecStart"])
	}
	// The stop timeout leaves poold its default --shutdown-grace (30s).
	if d := strings.TrimSuffix(strings.Join(s["TimeoutStopSec"], ""), "s"); d == "" {
		t.Errorf("%s: no TimeoutStopSec", unitFile)
	} else if n, err := strconv.Atoi(d); err != nil || n <= 30 {
		t.Errorf("%s: TimeoutStopSec=%s, want more than poold's 30s shutdown grace", unitFile, d)
	}

	flags := pooldFlags(t)
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`POOLPLANE_([A-Z_]+)`).FindAllStringSubmatch(string(b), -1) {
		if f := strings.ToLower(strings.ReplaceAll(m[1], "_", "-")); !flags[f] {
			t.Errorf("%s: %s is no poold flag's variable", unitFile, m[0])
		}
	}
}

// TestSystemdAnalyze runs systemd-analyze verify on the unit (with
// ExecStart pointing at an executable that exists here) and fails on any
// complaint, an unknown directive included; then systemd-analyze security
// must rate it 2.0 or better ("OK").
func TestSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skipf("no systemd-analyze (apt-get install systemd); the unit's directives are not verified: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "poold.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "ExecStart=/usr/local/bin/poold", "ExecStart="+exe)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}

	out, err = exec.Command(sa, "security", "--offline=yes", unit).CombinedOutput()
	if err != nil {
		t.Skipf("systemd-analyze security --offline (systemd 250 or later): %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for poold\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: no exposure level in\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.0 {
		t.Errorf("systemd-analyze security rates %s %.1f, want 2.0 or better:\n%s", unitFile, level, out)
	}
}
