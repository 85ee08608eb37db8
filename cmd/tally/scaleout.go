package main

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/state"
)

// resolveScaleOut returns the layout to run: scaleOut when it is set;
// unset, group, so that a second instance started on the same topics takes
// a share of the partitions instead of billing them again, and a single
// instance is a group of one. Two cases keep one engine for every
// partition (off), and why says which:
//   - the state folder already holds off's layout (one store for every
//     partition): that state stays with it, and moving it into tasks is
//     not something to do silently;
//   - kafka.partitioner is none without kafka.repartition: no task could
//     own a customer (an error on a folder of tasks, which placed them).
func resolveScaleOut(cfg Config) (layout, why string, err error) {
	if cfg.ScaleOut != "" {
		return cfg.ScaleOut, "", nil
	}
	entries, err := os.ReadDir(cfg.StateDir)
	if err != nil && !os.IsNotExist(err) {
		return "", "", fmt.Errorf("state folder: %w", err)
	}
	tasks := false
	for _, e := range entries {
		name := e.Name()
		tasks = tasks || name == "node" || name == "tasks"
		if !engine.TasksLayoutEntry(name) {
			if cfg.Kafka.Repartition {
				return "", "", keyError("kafka.repartition", "needs partition-owned tasks, but state folder %s holds the single-engine layout of scaleOut: off (%s); give a new stateDir",
					cfg.StateDir, name)
			}
			return scaleOutOff, fmt.Sprintf("state folder %s holds the single-engine layout (it has %s): kept; a second instance on these topics would bill them again. To scale out, run with scaleOut: group on a new stateDir (docs/scale-out.md)",
				cfg.StateDir, name), nil
		}
	}
	if cfg.Kafka.Partitioner == string(engine.PartitionerNone) && !cfg.Kafka.Repartition {
		if tasks {
			return "", "", keyError("kafka.partitioner", "none, but state folder %s holds partition-owned tasks, which place customers by it: name the producers' partitioner, or set kafka.repartition: true", cfg.StateDir)
		}
		return scaleOutOff, "kafka.partitioner is none: one engine reads every partition; a second instance on these topics would bill them again. To scale out, set kafka.repartition: true (docs/scale-out.md)", nil
	}
	return scaleOutGroup, "", nil
}

// nodeName returns kafka.instanceId or, unset, the name kept in the
// node's store (node). The repartition stage's transactional id is built
// from it, so it is stable across the folder's restarts (a restart fences
// what its previous run left open) and unique among live processes
// (invariant: no two share it). The name is made the first time a folder
// runs (host and a random part) and kept with where it was made (host and
// folder path): a folder copied elsewhere, or run on another host, makes
// its own, so a copy seeding a second instance does not share it. On the
// folder itself, the node store's lock keeps a second process off; the
// caller holds it from before any client uses the name until after they
// all closed.
func (c *Config) nodeName(node *state.Store) (string, error) {
	if c.Kafka.InstanceID != "" {
		return c.Kafka.InstanceID, nil
	}
	host, _ := os.Hostname()
	dir, err := filepath.Abs(c.StateDir)
	if err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	origin := host + "\x00" + dir + "\x00"
	stored, ok, err := node.NodeName()
	if err != nil {
		return "", err
	}
	if ok && strings.HasPrefix(stored, origin) {
		return stored[len(origin):], nil
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("node name: %w", err)
	}
	name := fmt.Sprintf("%s-%x", host, b)
	return name, node.SetNodeName(origin + name)
}
