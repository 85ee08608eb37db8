package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tally-billing/tally/state"
)

// TestScaleOutDefault: unset, scaleOut is group, except on a state folder
// that holds the single-engine layout (written by a real state.Store) or
// with kafka.partitioner none; an explicit value is kept.
func TestScaleOutDefault(t *testing.T) {
	offLayout := filepath.Join(t.TempDir(), "off")
	st, err := state.Open(offLayout)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	tasksLayout := filepath.Join(t.TempDir(), "group")
	for _, sub := range []string{"node", "tasks/0"} {
		if err := os.MkdirAll(filepath.Join(tasksLayout, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lockOnly := t.TempDir()
	if err := os.WriteFile(filepath.Join(lockOnly, "LOCK"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, stateDir, scaleOut, partitioner string
		repartition                           bool
		want, why, err                        string
	}{
		{name: "new folder", stateDir: filepath.Join(t.TempDir(), "new"), want: scaleOutGroup},
		{name: "tasks layout", stateDir: tasksLayout, want: scaleOutGroup},
		{name: "off layout kept", stateDir: offLayout, want: scaleOutOff, why: "single-engine layout"},
		{name: "explicit off", stateDir: tasksLayout, scaleOut: scaleOutOff, want: scaleOutOff},
		{name: "explicit local", stateDir: offLayout, scaleOut: scaleOutLocal, want: scaleOutLocal},
		{name: "partitioner none", stateDir: filepath.Join(t.TempDir(), "new"), partitioner: "none", want: scaleOutOff, why: "kafka.repartition"},
		{name: "partitioner none on tasks", stateDir: tasksLayout, partitioner: "none", err: "kafka.partitioner"},
		{name: "only a LOCK", stateDir: lockOnly, want: scaleOutGroup},
		{name: "partitioner none, repartitioned", stateDir: tasksLayout, partitioner: "none", repartition: true, want: scaleOutGroup},
		{name: "repartition on the off layout", stateDir: offLayout, repartition: true, err: "kafka.repartition"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := defaultConfig()
			cfg.StateDir, cfg.ScaleOut, cfg.Kafka.Repartition = c.stateDir, c.scaleOut, c.repartition
			if c.partitioner != "" {
				cfg.Kafka.Partitioner = c.partitioner
			}
			got, why, err := resolveScaleOut(cfg)
			switch {
			case c.err != "":
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("error %v, want one naming %s", err, c.err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if got != c.want || !strings.Contains(why, c.why) || (c.why == "") != (why == "") {
				t.Errorf("resolveScaleOut = %s (%q), want %s (%q)", got, why, c.want, c.why)
			}
		})
	}
}

// TestNodeNameKeptInTheFolder: a node's name (the repartition stage's
// transactional id is built from it) is made once per state folder and
// kept in the node's store (a restart uses it again; two folders get
// different ones); a copy of the folder at another path gets its own;
// kafka.instanceId wins.
func TestNodeNameKeptInTheFolder(t *testing.T) {
	nameOf := func(cfg Config) string {
		t.Helper()
		node, err := state.Open(filepath.Join(cfg.StateDir, "node"))
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		name, err := cfg.nodeName(node)
		if err != nil {
			t.Fatal(err)
		}
		return name
	}
	cfg := defaultConfig()
	cfg.StateDir = filepath.Join(t.TempDir(), "a")
	first := nameOf(cfg)
	if again := nameOf(cfg); again != first || first == "" {
		t.Errorf("names %q then %q: want one name, kept", first, again)
	}
	other := cfg
	other.StateDir = t.TempDir()
	if name := nameOf(other); name == first {
		t.Errorf("two folders share the name %q", name)
	}
	copied := cfg
	copied.StateDir = filepath.Join(t.TempDir(), "copy")
	if err := os.CopyFS(copied.StateDir, os.DirFS(cfg.StateDir)); err != nil {
		t.Fatal(err)
	}
	if name := nameOf(copied); name == first {
		t.Errorf("a copy of the folder kept the name %q", name)
	}
	if name := nameOf(cfg); name != first {
		t.Errorf("the original folder's name became %q, was %q", name, first)
	}
	cfg.Kafka.InstanceID = "pod-7"
	if name := nameOf(cfg); name != "pod-7" {
		t.Errorf("kafka.instanceId pod-7 gave %q", name)
	}
}
