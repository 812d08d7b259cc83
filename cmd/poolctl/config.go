package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// config is poolctl's config file: named contexts, each a poold to talk
// to and how, in the manner of kubectl's kubeconfig.
//
//	current_context: prod
//	contexts:
//	  - name: prod
//	    server: 10.0.0.1:7700,10.0.0.2:7700
//	    token_file: ~/.config/poolctl/prod.token
//	    tls: true
//	    ca_file: /etc/poolplane/ca.pem
//	    server_name: poold.internal
//	  - name: local
//	    server: unix:///run/poold/poold.sock
type config struct {
	CurrentContext string          `yaml:"current_context"`
	Contexts       []configContext `yaml:"contexts"`
}

// configContext is one context of the config file. Relative file names
// are relative to the config file's directory; "~/" is the home directory.
type configContext struct {
	Name       string `yaml:"name"`
	Server     string `yaml:"server"`
	Token      string `yaml:"token"`
	TokenFile  string `yaml:"token_file"`
	TLS        bool   `yaml:"tls"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
	Timeout    string `yaml:"timeout"`
}

// configPath returns the config file's path: $POOLCTL_CONFIG, else
// poolctl/config.yaml in the user's config directory; explicit reports
// whether $POOLCTL_CONFIG named it (then it must exist).
func configPath() (path string, explicit bool) {
	if p := os.Getenv("POOLCTL_CONFIG"); p != "" {
		return p, true
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", false
	}
	return filepath.Join(dir, "poolctl", "config.yaml"), false
}

// loadConfig reads the config file; it returns nil, nil when there is
// none.
func loadConfig() (*config, string, error) {
	path, explicit := configPath()
	if path == "" {
		return nil, "", nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return nil, path, nil
	}
	if err != nil {
		return nil, path, fmt.Errorf("config: %w", err)
	}
	var cfg config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, path, fmt.Errorf("config %s: %w", path, err)
	}
	seen := map[string]bool{}
	for _, c := range cfg.Contexts {
		if c.Name == "" {
			return nil, path, fmt.Errorf("config %s: a context has no name", path)
		}
		if seen[c.Name] {
			return nil, path, fmt.Errorf("config %s: context %q is defined twice", path, c.Name)
		}
		seen[c.Name] = true
	}
	return &cfg, path, nil
}

// context returns the named context, or the current one when name is "".
func (c *config) context(name string) (*configContext, error) {
	if name == "" {
		name = c.CurrentContext
	}
	if name == "" {
		return nil, nil
	}
	for i := range c.Contexts {
		if c.Contexts[i].Name == name {
			return &c.Contexts[i], nil
		}
	}
	names := make([]string, 0, len(c.Contexts))
	for _, x := range c.Contexts {
		names = append(names, x.Name)
	}
	return nil, fmt.Errorf("no context %q in the config file (it has: %s)", name, strings.Join(names, ", "))
}

// applyConfig fills the global flags that neither the command line nor
// the environment set from the config file's context. It runs once per
// run.
func (e *env) applyConfig() error {
	if e.g.resolved {
		return nil
	}
	e.g.resolved = true
	cfg, path, err := loadConfig()
	if err != nil {
		return usagef("%v", err)
	}
	if cfg == nil {
		if e.g.context != "" {
			return usagef("--context %s: no config file (%s)", e.g.context, path)
		}
	} else {
		ctx, err := cfg.context(e.g.context)
		if err != nil {
			return usagef("%s: %v", path, err)
		}
		if ctx != nil {
			if err := e.g.fromContext(ctx, filepath.Dir(path)); err != nil {
				return usagef("%s: context %s: %v", path, ctx.Name, err)
			}
		}
	}
	if e.g.token != "" && e.g.tokenFile != "" && e.g.explicit("token") && e.g.explicit("token-file") {
		return usagef("--token and --token-file are exclusive")
	}
	return nil
}

// fromContext sets every global not given explicitly from ctx.
func (g *globals) fromContext(ctx *configContext, dir string) error {
	g.contextName = ctx.Name
	str := func(flag string, dst *string, v string, isFile bool) {
		if v == "" || g.explicit(flag) {
			return
		}
		if isFile {
			v = expandPath(v, dir)
		}
		*dst = v
	}
	str("server", &g.server, ctx.Server, false)
	str("token", &g.token, ctx.Token, false)
	str("token-file", &g.tokenFile, ctx.TokenFile, true)
	str("ca-file", &g.caFile, ctx.CAFile, true)
	str("cert-file", &g.certFile, ctx.CertFile, true)
	str("key-file", &g.keyFile, ctx.KeyFile, true)
	str("server-name", &g.serverName, ctx.ServerName, false)
	if ctx.TLS && !g.explicit("tls") {
		g.tls = true
	}
	if ctx.Timeout != "" && !g.explicit("timeout") {
		d, err := time.ParseDuration(ctx.Timeout)
		if err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		g.timeout = d
	}
	// A token given explicitly wins over the context's token file, and
	// the other way round.
	if g.explicit("token") && !g.explicit("token-file") {
		g.tokenFile = ""
	}
	if g.explicit("token-file") && !g.explicit("token") {
		g.token = ""
	}
	return nil
}

// explicit reports whether a global flag was set on the command line or
// in the environment.
func (g *globals) explicit(flag string) bool {
	return g.fromEnv[flag] || (g.changed != nil && g.changed(flag))
}

// readTokenFile reads --token-file into the token, when connecting.
func (g *globals) readTokenFile() error {
	if g.tokenFile == "" {
		return nil
	}
	data, err := os.ReadFile(g.tokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimRight(string(data), "\r\n")
	if tok == "" || strings.ContainsAny(tok, "\r\n") {
		return fmt.Errorf("--token-file %s: want one line holding the token", g.tokenFile)
	}
	g.token = tok
	return nil
}

// expandPath resolves "~/" and paths relative to dir.
func expandPath(p, dir string) string {
	if rest, ok := strings.CutPrefix(p, "~/"); ok {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, rest)
		}
	}
	if !filepath.IsAbs(p) && !strings.Contains(p, "://") {
		return filepath.Join(dir, p)
	}
	return p
}

func configCommand() *command {
	return &command{
		name: "config", args: "get-contexts | current-context | use-context NAME",
		summary: "show the config file's contexts, or choose the current one",
		minArgs: 1, maxArgs: 2,
		flags: func(*pflag.FlagSet) func(context.Context, *env, []string) error {
			return func(_ context.Context, e *env, args []string) error {
				cfg, path, err := loadConfig()
				if err != nil {
					return err
				}
				switch args[0] {
				case "get-contexts":
					if len(args) > 1 {
						return usagef("config get-contexts: unexpected argument %q", args[1])
					}
					if cfg == nil {
						return fmt.Errorf("config: no config file (%s)", path)
					}
					current := cmp.Or(e.g.context, cfg.CurrentContext)
					if e.g.output == "name" {
						for _, c := range cfg.Contexts {
							_, _ = fmt.Fprintln(e.stdout, printable(c.Name))
						}
						return nil
					}
					t := newTable(e.stdout, "CURRENT", "NAME", "SERVER", "TOKEN_FILE", "TLS")
					for _, c := range cfg.Contexts {
						mark := ""
						if c.Name == current {
							mark = "*"
						}
						tls := c.TLS || c.CAFile != "" || c.CertFile != ""
						t.row(mark, c.Name, c.Server, c.TokenFile, yesNo(tls))
					}
					return t.flush()
				case "current-context":
					if len(args) > 1 {
						return usagef("config current-context: unexpected argument %q", args[1])
					}
					if cfg == nil || cmp.Or(e.g.context, cfg.CurrentContext) == "" {
						return fmt.Errorf("config: no current context (%s)", path)
					}
					_, err := fmt.Fprintln(e.stdout, printable(cmp.Or(e.g.context, cfg.CurrentContext)))
					return err
				case "use-context":
					if len(args) != 2 {
						return usagef("config use-context: want a context NAME")
					}
					if cfg == nil {
						return fmt.Errorf("config: no config file (%s)", path)
					}
					if _, err := cfg.context(args[1]); err != nil {
						return err
					}
					if err := setCurrentContext(path, args[1]); err != nil {
						return err
					}
					_, _ = fmt.Fprintf(e.stdout, "current context: %s\n", printable(args[1]))
					return nil
				}
				return usagef("config: unknown subcommand %q: want get-contexts, current-context or use-context", args[0])
			}
		},
	}
}

// setCurrentContext rewrites current_context in the config file at path,
// keeping the rest of the file (comments included), through a temporary
// file renamed over it.
func setCurrentContext(path, name string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: not a mapping", path)
	}
	m := doc.Content[0]
	found := false
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == "current_context" {
			m.Content[i+1].SetString(name)
			found = true
		}
	}
	if !found {
		k, v := &yaml.Node{}, &yaml.Node{}
		k.SetString("current_context")
		v.SetString(name)
		m.Content = append([]*yaml.Node{k, v}, m.Content...)
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out.Bytes(), mode); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("config: %w", err)
	}
	return nil
}
