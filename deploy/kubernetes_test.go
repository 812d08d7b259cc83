package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

func TestDecodeStrict(t *testing.T) {
	tests := []struct {
		doc string
		ok  bool
	}{
		{"name: c\nimage: x\nsecurityContext:\n  readOnlyRootFilesystem: true\n", true},
		{"name: c\nsecurityContext:\n  readOnlyRootFileSystem: true\n", false}, // wrong case
		{"name: c\nimagePullPolicy: Always\nimagePullPolicy: Never\n", false},  // twice
		{"name: c\nrunAsUser: 65532\n", false},                                 // wrong level
		{"name: c\nports: 7700\n", false},                                      // wrong type
	}
	for _, tt := range tests {
		var c corev1.Container
		if err := decodeStrict([]byte(tt.doc), &c); (err == nil) != tt.ok {
			t.Errorf("decodeStrict(%q) = %v, want ok=%v", tt.doc, err, tt.ok)
		}
	}
}

// The tests below check the manifests offline: CI cannot download the
// schemas a validator such as kubeconform needs, so every document is
// decoded strictly into its typed object of k8s.io/api (an unknown or
// misspelt field, or a value of the wrong type, fails), then checked for
// what the design promises: non-root, read-only root file system, no
// privilege, flags poold has, files under mounted volumes, selectors that
// select, one image name.

// object is one decoded manifest document.
type object struct {
	file string
	kind string
	name string
	obj  any
}

var newObject = map[string]func() any{
	"v1/Namespace":                  func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"apps/v1/DaemonSet":             func() any { return &appsv1.DaemonSet{} },
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":           func() any { return &appsv1.StatefulSet{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// loadManifests decodes every document of every kubernetes/*.yaml.
func loadManifests(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no manifests in kubernetes/")
	}
	var objs []object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range docSep.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			mk, ok := newObject[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				t.Fatalf("%s document %d: %s %s is not a kind this test decodes; add it to newObject", f, i, tm.APIVersion, tm.Kind)
			}
			obj := mk()
			if err := decodeStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s document %d (%s): %v", f, i, tm.Kind, err)
			}
			objs = append(objs, object{file: f, kind: tm.Kind, name: metaName(obj), obj: obj})
		}
	}
	return objs
}

// decodeStrict decodes a YAML document into obj as the API server's strict
// field validation does: an unknown field, a field written twice, or a
// field in the wrong case (readOnlyRootFileSystem, which encoding/json
// would accept) is an error.
func decodeStrict(doc []byte, obj any) error {
	// YAML first: a key written twice does not survive into JSON.
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func metaName(obj any) string {
	type named interface{ GetName() string }
	if n, ok := obj.(named); ok {
		return n.GetName()
	}
	return ""
}

// workload is a pod template with the selector that owns it.
type workload struct {
	object
	selector map[string]string
	pod      *corev1.PodTemplateSpec
	claims   []string // a StatefulSet's volume claim templates
}

func workloads(objs []object) []workload {
	var ws []workload
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *appsv1.DaemonSet:
			ws = append(ws, workload{object: o, selector: v.Spec.Selector.MatchLabels, pod: &v.Spec.Template})
		case *appsv1.Deployment:
			ws = append(ws, workload{object: o, selector: v.Spec.Selector.MatchLabels, pod: &v.Spec.Template})
		case *appsv1.StatefulSet:
			w := workload{object: o, selector: v.Spec.Selector.MatchLabels, pod: &v.Spec.Template}
			for _, c := range v.Spec.VolumeClaimTemplates {
				w.claims = append(w.claims, c.Name)
			}
			ws = append(ws, w)
		}
	}
	return ws
}

func TestManifestsDecode(t *testing.T) {
	objs := loadManifests(t)
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.kind]++
		if o.name == "" {
			t.Errorf("%s: a %s without a name", o.file, o.kind)
		}
		if o.kind != "Namespace" {
			if ns := o.obj.(interface{ GetNamespace() string }).GetNamespace(); ns != "poolplane" {
				t.Errorf("%s: %s %s in namespace %q, want poolplane", o.file, o.kind, o.name, ns)
			}
		}
	}
	// The two shapes of the design: one poold per node, and replicas
	// sharing etcd behind a headless Service.
	for _, k := range []string{"DaemonSet", "Deployment", "StatefulSet", "Service"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in kubernetes/", k)
		}
	}
}

// TestManifestsSecurity: every container runs as a non-root user, without
// privilege escalation or capabilities, on a read-only root file system,
// with a memory limit; the one exception is the node manifest's init
// container that hands the host directories to poold's user.
func TestManifestsSecurity(t *testing.T) {
	for _, w := range workloads(loadManifests(t)) {
		spec := w.pod.Spec
		where := fmt.Sprintf("%s: %s %s", w.file, w.kind, w.name)
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Errorf("%s: the pod's securityContext must set runAsNonRoot: true and a non-zero runAsUser", where)
		}
		if psc != nil && (psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
			t.Errorf("%s: seccompProfile must be RuntimeDefault", where)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: automountServiceAccountToken must be false (nothing here calls the Kubernetes API)", where)
		}
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			t.Errorf("%s: host namespaces", where)
		}
		check := func(c corev1.Container, init bool) {
			where := where + " container " + c.Name
			sc := c.SecurityContext
			if sc == nil {
				t.Errorf("%s: no securityContext", where)
				return
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation must be false", where)
			}
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: readOnlyRootFilesystem must be true", where)
			}
			if sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s: privileged", where)
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
				t.Errorf("%s: capabilities must drop ALL", where)
			}
			root := sc.RunAsUser != nil && *sc.RunAsUser == 0 || sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot
			if root || (sc.Capabilities != nil && len(sc.Capabilities.Add) > 0) {
				ok := init && c.Name == "own-dirs" && sc.Capabilities != nil && slices.Equal(sc.Capabilities.Add, []corev1.Capability{"CHOWN"})
				if !ok {
					t.Errorf("%s: runs as root or adds capabilities; only the init container own-dirs may, with CHOWN alone", where)
				}
			}
			if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
				t.Errorf("%s: no memory limit", where)
			}
			// A read-only root needs a volume wherever the process writes.
			for _, m := range c.VolumeMounts {
				if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) && !slices.Contains(w.claims, m.Name) {
					t.Errorf("%s: mounts volume %q, which the pod does not have", where, m.Name)
				}
			}
		}
		for _, c := range spec.InitContainers {
			check(c, true)
		}
		for _, c := range spec.Containers {
			check(c, false)
			if c.LivenessProbe == nil {
				t.Errorf("%s container %s: no liveness probe", where, c.Name)
			}
		}
	}
}

// TestManifestsPodSecurity: a namespace whose workloads mount host paths
// must not enforce a Pod Security Standard that forbids them (baseline and
// restricted do), or the API server refuses the pods.
func TestManifestsPodSecurity(t *testing.T) {
	objs := loadManifests(t)
	for _, o := range objs {
		ns, ok := o.obj.(*corev1.Namespace)
		if !ok {
			continue
		}
		level := ns.Labels["pod-security.kubernetes.io/enforce"]
		for _, w := range workloads(objs) {
			if w.obj.(interface{ GetNamespace() string }).GetNamespace() != ns.Name {
				continue
			}
			for _, v := range w.pod.Spec.Volumes {
				if v.HostPath != nil && (level == "baseline" || level == "restricted") {
					t.Errorf("%s: namespace %s enforces %s, which refuses %s %s (hostPath volume %s)", o.file, ns.Name, level, w.kind, w.name, v.Name)
				}
			}
		}
	}
}

// pooldImageRepo is the image `make image` builds (IMAGE in the Makefile).
func pooldImageRepo(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no IMAGE ?= in the Makefile")
	}
	return string(m[1])
}

// pooldFlags are the flags of poold -h as the README shows them (the README
// test checks that block against the real binary).
func pooldFlags(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := bytes.Cut(b, []byte("$ poold -h\n"))
	if !ok {
		t.Fatal("README.md has no poold -h block")
	}
	block, _, _ = bytes.Cut(block, []byte("```"))
	flags := map[string]bool{}
	// A flag's line: "      --data-dir string   ..." (cobra's help), or
	// "  -data-dir string" (the flag package's).
	for _, m := range regexp.MustCompile(`(?m)^ {2,6}(?:-[a-z], )?--?([a-z0-9][a-z0-9-]+)`).FindAllSubmatch(block, -1) {
		flags[string(m[1])] = true
	}
	if len(flags) < 10 {
		t.Fatalf("found %d flags in README.md's poold -h block", len(flags))
	}
	return flags
}

// TestManifestsPoold: every poold container uses the image make image
// builds, with the same tag everywhere; passes only flags poold has; and
// every file or directory it names lies under a volume mount.
func TestManifestsPoold(t *testing.T) {
	repo := pooldImageRepo(t)
	flags := pooldFlags(t)
	var tags []string
	n := 0
	for _, w := range workloads(loadManifests(t)) {
		for _, c := range w.pod.Spec.Containers {
			if !strings.Contains(c.Image, "/poold") {
				continue
			}
			n++
			where := fmt.Sprintf("%s: %s %s container %s", w.file, w.kind, w.name, c.Name)
			r, tag, _ := strings.Cut(c.Image, ":")
			if r != repo {
				t.Errorf("%s: image %s, want %s (the Makefile's IMAGE)", where, c.Image, repo)
			}
			tags = append(tags, tag)
			if len(c.Command) > 0 {
				t.Errorf("%s: command overrides the image's entrypoint", where)
			}
			for _, a := range c.Args {
				name, val, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !strings.HasPrefix(a, "--") || !flags[name] {
					t.Errorf("%s: argument %q is not a poold flag", where, a)
					continue
				}
				p := strings.TrimPrefix(val, "unix://")
				if strings.HasPrefix(p, "/") && !mounted(c, p) {
					t.Errorf("%s: --%s=%s is not under a volume mount (the root file system is read-only)", where, name, val)
				}
			}
			if !mounted(c, "/tmp/x") {
				t.Errorf("%s: /tmp is not a volume", where)
			}
		}
	}
	if n < 2 {
		t.Fatalf("found %d poold containers, want one per shape", n)
	}
	slices.Sort(tags)
	if tags = slices.Compact(tags); len(tags) != 1 {
		t.Errorf("poold image tags differ between manifests: %q", tags)
	}
}

func mounted(c corev1.Container, p string) bool {
	for _, m := range c.VolumeMounts {
		if p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/") {
			return true
		}
	}
	return false
}

// TestManifestsWiring: selectors select their pod templates; Services
// select a workload and target ports its containers name; the replicas'
// Service is headless (the SDK's dns:/// target needs an address per
// replica); the node poold's socket is on a host directory; etcd is the
// release the server is built and tested against.
func TestManifestsWiring(t *testing.T) {
	objs := loadManifests(t)
	ws := workloads(objs)
	for _, w := range ws {
		for k, v := range w.selector {
			if w.pod.Labels[k] != v {
				t.Errorf("%s: %s %s selects %s=%s, which its pod template lacks", w.file, w.kind, w.name, k, v)
			}
		}
	}
	for _, o := range objs {
		svc, ok := o.obj.(*corev1.Service)
		if !ok {
			continue
		}
		i := slices.IndexFunc(ws, func(w workload) bool {
			for k, v := range svc.Spec.Selector {
				if w.pod.Labels[k] != v {
					return false
				}
			}
			return len(svc.Spec.Selector) > 0
		})
		if i < 0 {
			t.Errorf("%s: Service %s selects no workload", o.file, svc.Name)
			continue
		}
		if svc.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s: Service %s is not headless", o.file, svc.Name)
		}
		for _, p := range svc.Spec.Ports {
			port := p.TargetPort.String()
			if !slices.ContainsFunc(ws[i].pod.Spec.Containers, func(c corev1.Container) bool {
				return slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == port || fmt.Sprint(cp.ContainerPort) == port })
			}) {
				t.Errorf("%s: Service %s port %s targets %s, which no container of %s has", o.file, svc.Name, p.Name, port, ws[i].name)
			}
		}
	}

	for _, w := range ws {
		ds, ok := w.obj.(*appsv1.DaemonSet)
		if !ok {
			continue
		}
		c := ds.Spec.Template.Spec.Containers[0]
		i := slices.IndexFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--listen=unix://") })
		if i < 0 {
			t.Errorf("%s: the node poold does not listen on a unix socket", w.file)
			continue
		}
		sock := strings.TrimPrefix(c.Args[i], "--listen=unix://")
		mi := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path.Dir(sock) })
		if mi < 0 {
			t.Errorf("%s: the socket's directory %s is not a mount", w.file, path.Dir(sock))
			continue
		}
		vi := slices.IndexFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == c.VolumeMounts[mi].Name })
		if vi < 0 || ds.Spec.Template.Spec.Volumes[vi].HostPath == nil {
			t.Errorf("%s: the socket's directory is not a hostPath volume: pods on the node cannot reach it", w.file)
		}
	}

	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`go\.etcd\.io/etcd/server/v3 (v\S+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("no etcd server in the root go.mod")
	}
	found := false
	for _, w := range ws {
		for _, c := range w.pod.Spec.Containers {
			if r, tag, _ := strings.Cut(c.Image, ":"); strings.HasSuffix(r, "/etcd") {
				found = true
				if tag != string(m[1]) {
					t.Errorf("%s: etcd image %s; the server is tested against etcd %s (go.mod)", w.file, c.Image, m[1])
				}
			}
		}
	}
	if !found {
		t.Error("no etcd container in kubernetes/")
	}
}
