package main

import (
	"bytes"
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	k8syaml "sigs.k8s.io/yaml"
)

// checkMountedConfig runs `tally run --check-config` on a configuration
// and plan file as a deployment mounts them (the plan's path in the
// container given by --plan).
func checkMountedConfig(t *testing.T, what, config, plans string) {
	t.Helper()
	cfg, err := loadConfig("run", []string{"--config", config, "--plan", plans}, true)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var out bytes.Buffer
	if err := checkConfig(cfg, &out, quietLog()); err != nil {
		t.Fatalf("%s: tally run --check-config: %v", what, err)
	}
	if !strings.HasPrefix(out.String(), "config OK") {
		t.Fatalf("%s: tally run --check-config said %q", what, out.String())
	}
}

// TestComposeFile validates deploy/compose/compose.yaml against the
// Compose specification (compose-go, the loader of docker compose),
// checks it runs what the issue asks (Kafka, ClickHouse, Prometheus,
// Grafana, Tally), that every file it mounts exists, that the Tally
// configuration and plans it mounts pass --check-config, and that its
// Prometheus configuration passes promtool with the rules it mounts.
// Docker cannot run here; this is as far as the file can be checked.
func TestComposeFile(t *testing.T) {
	dir, err := filepath.Abs(filepath.Join(deployDir, "compose"))
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), composetypes.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []composetypes.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: composetypes.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("tally", true) })
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for _, name := range []string{"kafka", "clickhouse", "prometheus", "grafana", "tally"} {
		if _, ok := project.Services[name]; !ok {
			t.Errorf("compose.yaml has no service %s (it has %v)", name, slices.Sorted(maps.Keys(project.Services)))
		}
	}
	mounts := map[string]map[string]string{} // service: container path: host path
	for name, s := range project.Services {
		mounts[name] = map[string]string{}
		for _, v := range s.Volumes {
			if v.Type != composetypes.VolumeTypeBind {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("service %s mounts %s, which does not exist: %v", name, v.Source, err)
			}
			mounts[name][v.Target] = v.Source
		}
	}
	tally := mounts["tally"]
	checkMountedConfig(t, "compose tally", tally["/etc/tally/tally.yaml"], tally["/etc/tally/plans.yaml"])
	if b := project.Services["tally"].Build; b == nil || b.Dockerfile == "" {
		t.Errorf("the tally service builds no image")
	} else if _, err := os.Stat(filepath.Join(b.Context, b.Dockerfile)); err != nil {
		t.Errorf("the tally service's Dockerfile: %v", err)
	}

	promtool := requireToolOf(t, "promtool", "prometheus")
	etc := t.TempDir() // the prometheus service's /etc/prometheus
	for target, source := range mounts["prometheus"] {
		b, err := os.ReadFile(source)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, filepath.Base(target)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(etc, "prometheus.yml")).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config on compose's prometheus.yml: %v\n%s", err, out)
	}
}

// TestKubernetesManifests decodes every manifest of deploy/kubernetes
// strictly into the Kubernetes API's own types (k8s.io/api: an unknown or
// misspelt field, a wrong type, fails), and checks that they fit
// together: the StatefulSet keeps state on a persistent volume per pod,
// runs N > 1 replicas in one consumer group each under its pod name,
// mounts the ConfigMap's files, probes named ports; the Services, the
// PodDisruptionBudget and the ServiceMonitor select its pods; the
// configuration and plans in the ConfigMap pass --check-config.
func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join(deployDir, "kubernetes")
	var (
		sts        appsv1.StatefulSet
		cm         corev1.ConfigMap
		services   []corev1.Service
		pdb        policyv1.PodDisruptionBudget
		monitor    serviceMonitor
		kustomized []string
	)
	var kustomization struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k8syaml.UnmarshalStrict(b, &kustomization); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, f := range files {
		name := filepath.Base(f)
		if name == "kustomization.yaml" {
			continue
		}
		kustomized = append(kustomized, name)
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(b), "\n---\n") {
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := k8syaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s document %d: %v", name, i, err)
			}
			var into any
			switch head.APIVersion + " " + head.Kind {
			case "apps/v1 StatefulSet":
				into = &sts
			case "v1 ConfigMap":
				into = &cm
			case "v1 Service":
				services = append(services, corev1.Service{})
				into = &services[len(services)-1]
			case "policy/v1 PodDisruptionBudget":
				into = &pdb
			case "monitoring.coreos.com/v1 ServiceMonitor":
				into = &monitor
			default:
				t.Fatalf("%s document %d: unexpected %s %s", name, i, head.APIVersion, head.Kind)
			}
			if err := k8syaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Errorf("%s document %d (%s): %v", name, i, head.Kind, err)
			}
		}
	}
	slices.Sort(kustomized)
	if listed := slices.Sorted(slices.Values(kustomization.Resources)); !slices.Equal(listed, kustomized) {
		t.Errorf("kustomization.yaml lists %v, the folder holds %v", listed, kustomized)
	}

	pods := sts.Spec.Template.Labels
	selects := func(selector map[string]string) bool {
		for k, v := range selector {
			if pods[k] != v {
				return false
			}
		}
		return len(selector) > 0
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas < 2 {
		t.Errorf("StatefulSet replicas %v: run N > 1 instances in the group", sts.Spec.Replicas)
	}
	if sts.Spec.Selector == nil || !selects(sts.Spec.Selector.MatchLabels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", sts.Spec.Selector, pods)
	}
	if len(sts.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("StatefulSet: %d containers, want tally's", len(sts.Spec.Template.Spec.Containers))
	}
	c := sts.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--kafka-instance-id=$(POD_NAME)") || !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POD_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name"
	}) {
		t.Errorf("container args %v, env %v: each pod must be a static member under its pod name", c.Args, c.Env)
	}
	ports := map[string]bool{}
	for _, p := range c.Ports {
		ports[p.Name] = true
	}
	for what, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || !ports[probe.HTTPGet.Port.String()] {
			t.Errorf("%s probe %+v: an HTTP probe on a named port of the container (%v)", what, probe, ports)
		}
	}
	mounted := map[string]string{} // volume: mount path
	for _, m := range c.VolumeMounts {
		mounted[m.Name] = m.MountPath
	}
	claims := map[string]bool{}
	for _, pvc := range sts.Spec.VolumeClaimTemplates {
		claims[pvc.Name] = true
	}
	configDir := ""
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cm.Name {
			configDir = mounted[v.Name]
		}
	}
	if configDir == "" {
		t.Errorf("the StatefulSet mounts no volume of ConfigMap %s", cm.Name)
	}
	dirCfg := t.TempDir()
	for _, key := range []string{"tally.yaml", "plans.yaml"} {
		if cm.Data[key] == "" {
			t.Fatalf("ConfigMap %s has no %s", cm.Name, key)
		}
		if err := os.WriteFile(filepath.Join(dirCfg, key), []byte(cm.Data[key]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.Contains(c.Args, filepath.Join(configDir, "tally.yaml")) {
		t.Errorf("container args %v do not read %s/tally.yaml", c.Args, configDir)
	}
	checkMountedConfig(t, "ConfigMap "+cm.Name, filepath.Join(dirCfg, "tally.yaml"), filepath.Join(dirCfg, "plans.yaml"))
	cfg, _ := loadConfig("run", []string{"--config", filepath.Join(dirCfg, "tally.yaml")}, true)
	if cfg.ScaleOut != scaleOutGroup || !claims[nameOfMount(mounted, cfg.StateDir)] {
		t.Errorf("scaleOut %q, stateDir %s on volume %q (claims %v): the pods share tasks as a group, state on their own persistent volumes",
			cfg.ScaleOut, cfg.StateDir, nameOfMount(mounted, cfg.StateDir), claims)
	}
	if filepath.Join(configDir, "plans.yaml") != cfg.Plan {
		t.Errorf("config plan %s is not the mounted %s/plans.yaml", cfg.Plan, configDir)
	}

	var monitored bool
	for _, s := range services {
		if !selects(s.Spec.Selector) {
			t.Errorf("Service %s selects %v, not the pods %v", s.Name, s.Spec.Selector, pods)
		}
		for _, p := range s.Spec.Ports {
			if !ports[p.TargetPort.String()] {
				t.Errorf("Service %s targets port %s, which the container does not name", s.Name, p.TargetPort.String())
			}
		}
		matches := len(monitor.Spec.Selector.MatchLabels) > 0
		for k, v := range monitor.Spec.Selector.MatchLabels {
			matches = matches && s.Labels[k] == v
		}
		if matches && slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == monitor.Spec.Endpoints[0].Port }) {
			monitored = true
		}
	}
	if !slices.ContainsFunc(services, func(s corev1.Service) bool {
		return s.Name == sts.Spec.ServiceName && s.Spec.ClusterIP == corev1.ClusterIPNone
	}) {
		t.Errorf("no headless Service %s for the StatefulSet", sts.Spec.ServiceName)
	}
	if !monitored || len(monitor.Spec.Endpoints) == 0 || monitor.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("the ServiceMonitor %+v scrapes no Service port of Tally's /metrics", monitor.Spec)
	}
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels) || pdb.Spec.MaxUnavailable == nil {
		t.Errorf("PodDisruptionBudget %+v: select the pods and bound maxUnavailable", pdb.Spec)
	}
}

// nameOfMount is the volume mounted at or above path.
func nameOfMount(mounted map[string]string, path string) string {
	for name, at := range mounted {
		if path == at || strings.HasPrefix(path, at+"/") {
			return name
		}
	}
	return ""
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// checked here (its CRD is not in k8s.io/api): decoded strictly too.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// TestCheckConfigCommand runs `tally run --check-config` as a deployment
// pipeline would: 0 and "config OK" on good files, 1 and the key on a bad
// one, connecting nowhere (the brokers named do not exist).
func TestCheckConfigCommand(t *testing.T) {
	bin := buildBinary(t)
	plans := filepath.Join(deployDir, "plans.yaml")
	config := filepath.Join(deployDir, "compose", "tally.yaml")
	out, err := exec.Command(bin, "run", "--check-config", "--config", config, "--plan", plans).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "config OK: plans telecom-demo") {
		t.Fatalf("good files: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "run", "--check-config", "--config", config, "--plan", plans, "--window", "7m").CombinedOutput()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 || !strings.Contains(string(out), "config key window (flag --window)") {
		t.Fatalf("a bad window: %v\n%s", err, out)
	}
}
