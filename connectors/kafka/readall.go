package kafka

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tally-billing/tally/engine"
)

// ReadToEnd reads every partition of the configured topics from its first
// offset to its end at the time of the call, in offset order, and calls fn
// with each record, with the source's isolation: reading committed, the end
// is the last stable offset and records of aborted transactions never come.
// Transaction markers are not passed on. Audits use it to re-read the
// source as the live engine read it.
func (s *Source) ReadToEnd(ctx context.Context, fn func(p engine.PartitionID, rec engine.Record) error) error {
	parts, err := s.Partitions(ctx)
	if err != nil {
		return err
	}
	list := s.adm.ListCommittedOffsets
	if s.cfg.ReadUncommitted {
		list = s.adm.ListEndOffsets
	}
	ends, err := list(ctx, s.cfg.Topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka source: end offsets of %v: %w", s.cfg.Topics, err)
	}
	starts, err := s.adm.ListStartOffsets(ctx, s.cfg.Topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka source: start offsets of %v: %w", s.cfg.Topics, err)
	}
	// One partition at a time: the poll hands records to open readers
	// only, so a reader left waiting cannot hold it.
	for _, p := range parts {
		end, _ := ends.Lookup(p.Topic, p.Partition)
		start, _ := starts.Lookup(p.Topic, p.Partition)
		if end.Offset <= start.Offset {
			continue // empty
		}
		if err := s.readRange(ctx, p, engine.OffsetEarliest, end.Offset, false, fn); err != nil {
			return err
		}
	}
	return nil
}

// readRange reads p from offset from (or its first) up to end (exclusive).
// exact reads until the record at end-1 itself came (a changelog, whose
// last record before its end is always a marker or a record kgo returns),
// and a stall is an error; otherwise a quiet partition below end is taken
// as read (see readToEndQuiet).
func (s *Source) readRange(ctx context.Context, p engine.PartitionID, from, end int64, exact bool, fn func(engine.PartitionID, engine.Record) error) error {
	r, err := s.Open(ctx, p, from)
	if err != nil {
		return err
	}
	defer r.Close()
	quiet := readToEndQuiet
	if exact {
		quiet = restoreStall
	}
	for {
		fetchCtx, cancel := context.WithTimeout(ctx, quiet)
		records, err := r.Fetch(fetchCtx)
		cancel()
		if err != nil {
			if exact && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%s: nothing read for %s before offset %d: the changelog cannot be read to its end; nothing is restored from part of it", p, restoreStall, end-1)
			}
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				// Nothing below end came for a while: what is left there
				// was filtered by kgo (records of aborted transactions
				// whose marker is past end, behind a transaction still
				// open) or removed by compaction. Done, once the broker
				// answers (a broker that is down is waited for).
				if _, lerr := s.adm.ListCommittedOffsets(ctx, p.Topic); lerr == nil {
					return nil
				}
				continue
			}
			return err
		}
		for _, rec := range records {
			if rec.Offset >= end {
				return nil
			}
			if !rec.Control {
				if err := fn(p, rec); err != nil {
					return err
				}
			}
			if rec.Offset == end-1 {
				return nil
			}
		}
	}
}

// readToEndQuiet is how long ReadToEnd waits for more of a partition
// below its end before deciding the rest was filtered or compacted away.
// Committed records below the last stable offset come at once.
const readToEndQuiet = 5 * time.Second

// restoreStall bounds how long a restore waits for the next record of a
// changelog before it gives up (with an error, never a partial restore).
const restoreStall = 2 * time.Minute
