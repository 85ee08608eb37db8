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
		{name: "partitioner none", stateDir: tasksLayout, partitioner: "none", want: scaleOutOff, why: "kafka.repartition"},
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
