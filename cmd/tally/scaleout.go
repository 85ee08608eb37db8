package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/cespare/xxhash/v2"
	"github.com/tally-billing/tally/engine"
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
//     own a customer.
func resolveScaleOut(cfg Config) (layout, why string, err error) {
	if cfg.ScaleOut != "" {
		return cfg.ScaleOut, "", nil
	}
	entries, err := os.ReadDir(cfg.StateDir)
	if err != nil && !os.IsNotExist(err) {
		return "", "", fmt.Errorf("state folder: %w", err)
	}
	for _, e := range entries {
		// The partition-owned layout is node and tasks (engine.Node.place).
		if name := e.Name(); name != "node" && name != "tasks" && name != "lost+found" {
			if cfg.Kafka.Repartition {
				return "", "", keyError("kafka.repartition", "needs partition-owned tasks, but state folder %s holds the single-engine layout of scaleOut: off (%s); give a new stateDir",
					cfg.StateDir, name)
			}
			return scaleOutOff, fmt.Sprintf("state folder %s holds the single-engine layout (it has %s): kept; a second instance on these topics would bill them again. To scale out, run with scaleOut: group on a new stateDir (docs/scale-out.md)",
				cfg.StateDir, name), nil
		}
	}
	if cfg.Kafka.Partitioner == string(engine.PartitionerNone) && !cfg.Kafka.Repartition {
		return scaleOutOff, "kafka.partitioner is none: one engine reads every partition; a second instance on these topics would bill them again. To scale out, set kafka.repartition: true (docs/scale-out.md)", nil
	}
	return scaleOutGroup, "", nil
}

// instanceID returns kafka.instanceId or, unset, one derived from the host
// and the state folder, and whether it was derived. A derived id keeps a
// restarted instance's tasks (static membership) without waiting for the
// killed process's session to expire; two processes never share it, since
// they cannot share a state folder (engine.Node locks it).
func (c *Config) instanceID() (id string, derived bool) {
	if c.Kafka.InstanceID != "" {
		return c.Kafka.InstanceID, false
	}
	// The repartition stage's transactional id is built from this id: its
	// form must not change, or a restart would not fence the transactions
	// the previous build left open.
	host, _ := os.Hostname()
	dir, _ := filepath.Abs(c.StateDir)
	return fmt.Sprintf("%s-%x", host, xxhash.Sum64String(dir)), true
}
