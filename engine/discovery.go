package engine

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"
)

// TopicIdentifier is implemented by sources whose topics have an identity
// beyond their name (Kafka topic IDs): a topic deleted and created again
// under the same name has a new one, and offsets checkpointed for the old
// topic mean nothing in the new.
type TopicIdentifier interface {
	// TopicIDs returns each topic's identity; a topic without one is left
	// out.
	TopicIDs(ctx context.Context) (map[string]string, error)
}

// checkTopicIDs compares the source's topic identities with those recorded
// in the state and returns the ones not recorded yet (written with the next
// checkpoint). Invariant: offsets are only ever applied to the topic they
// were read from; a recreated topic is refused, never read from old offsets.
func (e *Engine) checkTopicIDs(ctx context.Context, recorded map[string]string) (unrecorded map[string]string, err error) {
	ti, ok := e.source.(TopicIdentifier)
	if !ok {
		return nil, nil
	}
	current, err := ti.TopicIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("engine: topic identities: %w", err)
	}
	for _, topic := range slices.Sorted(maps.Keys(current)) {
		id := current[topic]
		old, ok := recorded[topic]
		switch {
		case !ok:
			if unrecorded == nil {
				unrecorded = make(map[string]string)
			}
			unrecorded[topic] = id
		case old != id:
			fresh := "a fresh state folder (stateDir)"
			if e.cfg.Changelog != nil {
				// A task restores its state from the changelog first.
				fresh = "a fresh state folder (stateDir) and a new changelog topic (kafka.changelogTopic)"
			}
			return nil, fmt.Errorf("engine: topic %q was deleted and created again (topic ID %s in the state, %s now): "+
				"the state's offsets belong to the old topic. Keep this state for the old topic's bills; to bill the new "+
				"topic, start with %s, or restore the old topic", topic, old, id, fresh)
		}
	}
	return unrecorded, nil
}

// discoverPartitions lists the source's partitions every interval and
// hands those not read yet to the dispatcher, which opens them from their
// first offset. It also re-checks topic identities: a topic recreated while
// Tally runs stops it. It returns when ctx ends.
func (e *Engine) discoverPartitions(ctx context.Context, interval time.Duration, known map[PartitionID]bool, ids map[string]string, add chan<- PartitionID) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		listed, err := e.source.Partitions(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// A listing that fails now is retried at the next tick: the
			// partitions being read go on meanwhile.
			e.log.Warn("listing source partitions failed; retrying", "in", interval, "err", err)
			continue
		}
		if len(ids) > 0 {
			if _, err := e.checkTopicIDs(ctx, ids); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		for _, id := range listed {
			if known[id] {
				continue
			}
			known[id] = true
			e.log.Info("new source partition; reading it from its first offset", "partition", id.String())
			select {
			case add <- id:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// noteUnreadStart says that retention deleted the start of a partition
// before Tally read it: records between offset 0 and logStart were never
// rated. The engine goes on (there is nothing left to read), but says so in
// the log, tally_source_unread_offsets and /readyz.
func (e *Engine) noteUnreadStart(id PartitionID, logStart int64) {
	e.log.Error("partition's first records were deleted by retention before Tally read them: they are not rated",
		"partition", id.String(), "offsets", fmt.Sprintf("0..%d", logStart-1))
	e.metrics.unreadOffsets.WithLabelValues(id.Topic, strconv.Itoa(int(id.Partition))).Set(float64(logStart))
	e.health.set(func(h *health) {
		if h.warnings == nil {
			h.warnings = make(map[string]string)
		}
		h.warnings["unread/"+id.String()] = fmt.Sprintf("%s: offsets 0..%d were deleted by retention before Tally read them (not rated)", id, logStart-1)
	})
}
