package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// The checkpoint is the engine's exactly-once protocol, in three parts:
//
//   - the cut (dispatcher.cut): the dispatcher records every partition's
//     next offset and sends each shard a barrier on the same FIFO channel
//     as its events, so the barrier splits every shard's input exactly at
//     the recorded offsets;
//   - the barrier (shard.snapshot): each shard emits the rows due, evicts
//     what left the horizons and hands over everything that changed since
//     its previous barrier, already encoded;
//   - the writer (writeCheckpoints): gathers the shards' snapshots, commits
//     them with the offsets, the watermark and the rows (the outbox) in one
//     synced Pebble batch (after the task's changelog transaction, when it
//     has one), then publishes the durable sequence.
//
// Invariants: a row leaves the engine (sinks read the outbox) only once the
// checkpoint holding its window's state and the offsets past its records is
// durable; a restart resumes from the last durable checkpoint's offsets with
// exactly the state that saw the records before them.

// pendingCheckpoint is a cut handed from the dispatcher to the writer.
type pendingCheckpoint struct {
	seq         uint64
	base        bool // a delta log base (see barrier)
	cutAt       time.Time
	partitions  []state.PartitionProgress
	deadLetters []DeadLetter
	watermarkNs int64
	replies     chan *shardSnapshot
	// topicIDs and partitionCounts are source topic identities and
	// partition counts not recorded yet.
	topicIDs        map[string]string
	partitionCounts map[string]int32
}

// commit makes cp durable: in the store, and first in the task's changelog
// when it has one (the checkpoint exists once the changelog transaction
// committed; see docs/scale-out.md). A changelog out of reach (a broker
// outage) is retried until it takes the checkpoint, ctx ends, or it says
// the task was fenced. Waiting is safe: nothing of the checkpoint is
// visible before it commits, and the engine pauses behind it (at most
// pendingCheckpoints cuts wait).
func (e *Engine) commit(ctx context.Context, cp *state.Checkpoint) error {
	if e.cfg.Changelog == nil {
		return e.store.Commit(cp)
	}
	return e.store.CommitPublished(cp, func(ops []state.Op) (int64, error) {
		var position int64
		err := e.changelogRetry.Retry(ctx, func(int) error {
			var err error
			position, err = e.cfg.Changelog.Append(ctx, ops)
			if err != nil && ctx.Err() == nil {
				e.metrics.checkpointErrors.Inc()
			}
			if errors.Is(err, ErrFenced) {
				return Permanent(err)
			}
			return err
		}, func(attempt int, err error, wait time.Duration) {
			e.health.set(func(h *health) { h.changelog = err })
			e.log.Warn("checkpoint could not reach the changelog; retrying", "checkpoint", cp.Seq, "attempt", attempt, "retry_in", wait, "err", err)
		})
		e.health.set(func(h *health) { h.changelog = nil })
		if err != nil && context.Cause(ctx) != nil {
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		}
		return position, err
	})
}

// ErrStopTimedOut ends a graceful stop that waited DrainTimeout for the
// changelog to take a checkpoint.
var ErrStopTimedOut = errors.New("graceful stop timed out")

// commitContext is ctx for the checkpoint writer's commits. During a
// graceful stop it ends DrainTimeout after the stop began, so that a
// changelog out of reach cannot hold the stop forever. What it did not
// commit is not lost: the next start (or the task's next owner) restores
// the last committed checkpoint and reads the records after it again.
func (e *Engine) commitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	cctx, cancel := context.WithCancelCause(ctx)
	if e.cfg.DrainTimeout <= 0 || e.cfg.Changelog == nil {
		return cctx, func() { cancel(nil) }
	}
	go func() {
		select {
		case <-e.stop:
		case <-cctx.Done():
			return
		}
		t := time.NewTimer(e.cfg.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel(fmt.Errorf("%w: the changelog took no checkpoint within drainTimeout (%s), so the stop ends without one; nothing is lost: the records after the last committed checkpoint are read again at the next start",
				ErrStopTimedOut, e.cfg.DrainTimeout))
		case <-cctx.Done():
		}
	}()
	return cctx, func() { cancel(nil) }
}

// writeCheckpoints is the checkpoint writer: it gathers each cut's shard
// snapshots, commits them with the cut's offsets and outbox in one synced
// batch (within commitCtx), then publishes the new durable sequence.
func (e *Engine) writeCheckpoints(ctx, commitCtx context.Context, writes <-chan *pendingCheckpoint) error {
	var lastDedupExpiry, lastFinalized int64
	gone := state.Gone{WindowEndNs: e.rules.goneEndNs, SettleNs: e.rules.goneSettleNs, DedupBucketNs: e.rules.goneBucketNs}
	for pc := range writes {
		snaps := make([]*shardSnapshot, 0, len(e.shards))
		for range e.shards {
			var snap *shardSnapshot
			select {
			case snap = <-pc.replies:
			case <-ctx.Done():
				return nil
			}
			if snap.err != nil {
				return fmt.Errorf("engine: checkpoint %d: shard %d: %w", pc.seq, snap.shard, snap.err)
			}
			snaps = append(snaps, snap)
		}
		cp, t, err := e.gather(pc, snaps)
		if err != nil {
			return err
		}
		if expiry := e.rules.dedupExpiry(pc.watermarkNs); pc.watermarkNs != minWatermark && expiry > lastDedupExpiry {
			cp.DedupExpireBeforeNs, lastDedupExpiry = expiry, expiry
		}
		// Every window of a period that no record may revise any more goes,
		// in one range delete: finalized periods, or without finalizeAfter
		// periods that ended reviseHorizon ago (which also removes windows
		// that spilled from memory early).
		f := e.rules.retentionNs()
		if pc.watermarkNs != minWatermark && pc.watermarkNs-f > lastFinalized {
			cp.WindowsFinalizedBeforeNs, lastFinalized = pc.watermarkNs-f, pc.watermarkNs-f
		}
		// How far this checkpoint's deletions (and every earlier one's)
		// reach, so that a restart with longer horizons refuses what they
		// removed (timeRules.goneEndNs).
		gone = e.rules.gone(pc.watermarkNs, gone)
		cp.Gone = &gone
		cp.SinkProgress, cp.OutboxTrim = e.outboxMarks(pc.seq - 1)

		if e.cfg.FaultHook != nil {
			e.cfg.FaultHook("checkpoint")
		}
		if err := e.commit(commitCtx, cp); err != nil {
			return fmt.Errorf("engine: checkpoint %d not durable, stopping so nothing unpersisted is acknowledged: %w", pc.seq, err)
		}
		// From here the checkpoint is durable. Its counters are added before
		// its sequence is published, so that whoever sees the sequence also
		// sees what it counted.
		if e.logSize.wrote(int64(t.deltaBytes), pc.base) {
			e.baseDue.Store(true)
		}
		e.count(pc, cp, t)
		e.committedSeq.Store(pc.seq)
		e.wakeWaiters()
	}
	return nil
}

// checkpointTotals is what a checkpoint's snapshots add to the engine's
// counters once it is durable.
type checkpointTotals struct {
	rows, finals       int
	actions            []rating.Action
	credits            int
	dead               []DeadLetter
	revenue            map[string]decimal.Decimal // net change by currency
	duplicates         map[string]uint64          // by meter
	live, dedupIDs     int
	dedupBytes         int
	coldReads, spilled uint64
	overBudget         bool
	deltaBytes         int
	deltaEntries       int
}

// gather merges the shards' snapshots of cut pc into one checkpoint, its
// rows and dead letters encoded into the outbox.
func (e *Engine) gather(pc *pendingCheckpoint, snaps []*shardSnapshot) (*state.Checkpoint, checkpointTotals, error) {
	cp := &state.Checkpoint{Seq: pc.seq, DeltaBase: pc.base, Partitions: pc.partitions, Outbox: make(map[state.Stream][][]byte),
		WatermarkNs: pc.watermarkNs, HasWatermark: pc.watermarkNs != minWatermark, TopicIDs: pc.topicIDs, PartitionCounts: pc.partitionCounts}
	t := checkpointTotals{dead: pc.deadLetters, revenue: make(map[string]decimal.Decimal), duplicates: make(map[string]uint64)}
	var nPuts, nDedup, nRows int
	for _, snap := range snaps {
		nPuts, nDedup, nRows = nPuts+len(snap.windowPuts), nDedup+len(snap.dedupAdds), nRows+len(snap.encodedRows)
	}
	cp.WindowPuts = make([]state.KV, 0, nPuts)
	cp.DedupAdds = make([]state.DedupEntry, 0, nDedup)
	if nRows > 0 {
		cp.Outbox[state.StreamRated] = make([][]byte, 0, nRows)
	}
	for _, snap := range snaps {
		cp.DeltaChunks = append(cp.DeltaChunks, snap.deltaChunks...)
		t.deltaBytes += snap.deltaBytes
		t.deltaEntries += snap.deltaEntries
		cp.WindowPuts = append(cp.WindowPuts, snap.windowPuts...)
		cp.SubscriptionPuts = append(cp.SubscriptionPuts, snap.subsPuts...)
		cp.GrantPuts = append(cp.GrantPuts, snap.grantPuts...)
		cp.SLAPuts = append(cp.SLAPuts, snap.slaPuts...)
		cp.SLADeletes = append(cp.SLADeletes, snap.slaDeletes...)
		cp.ServicePuts = append(cp.ServicePuts, snap.servicePuts...)
		cp.ServiceDeletes = append(cp.ServiceDeletes, snap.serviceDeletes...)
		t.credits += snap.credits
		cp.WindowDeletes = append(cp.WindowDeletes, snap.windowDeletes...)
		cp.DedupAdds = append(cp.DedupAdds, snap.dedupAdds...)
		// In shard order: each shard's rows in its emission order.
		if len(snap.encodedRows) > 0 {
			cp.Outbox[state.StreamRated] = append(cp.Outbox[state.StreamRated], snap.encodedRows...)
		}
		t.rows += len(snap.encodedRows)
		t.finals += snap.finals
		t.dead = append(t.dead, snap.deadLetters...)
		for currency, delta := range snap.revenue {
			t.revenue[currency] = t.revenue[currency].Add(delta)
		}
		for meter, n := range snap.duplicates {
			t.duplicates[meter] += n
		}
		t.live += snap.liveWindows
		t.coldReads += snap.coldReads
		t.spilled += snap.spilled
		t.overBudget = t.overBudget || snap.overBudget
		t.dedupIDs += snap.dedupIDs
		t.dedupBytes += snap.dedupBytes
	}
	for i := range t.dead {
		b, err := json.Marshal(&t.dead[i])
		if err != nil {
			return nil, t, fmt.Errorf("engine: encode dead letter: %w", err)
		}
		cp.Outbox[state.StreamDeadLetter] = append(cp.Outbox[state.StreamDeadLetter], b)
	}
	// In shard order: each shard's actions in the order it announced them.
	for _, snap := range snaps {
		for i := range snap.actions {
			b, err := json.Marshal(&snap.actions[i])
			if err != nil {
				return nil, t, fmt.Errorf("engine: encode provisioning action: %w", err)
			}
			cp.Outbox[state.StreamProvisioning] = append(cp.Outbox[state.StreamProvisioning], b)
			t.actions = append(t.actions, snap.actions[i].Action)
		}
	}
	return cp, t, nil
}

// count adds durable checkpoint cp's totals to the metrics and stats.
func (e *Engine) count(pc *pendingCheckpoint, cp *state.Checkpoint, t checkpointTotals) {
	e.metrics.checkpointDuration.Observe(time.Since(pc.cutAt).Seconds())
	e.metrics.checkpointBytes.Observe(float64(t.deltaEntries + len(cp.WindowPuts) + len(cp.WindowDeletes) + len(cp.DedupAdds) + t.rows + len(t.dead)))
	e.metrics.checkpointSeq.Set(float64(pc.seq))
	e.metrics.liveWindows.Set(float64(t.live))
	e.metrics.coldReads.Add(float64(t.coldReads))
	e.metrics.spilled.Add(float64(t.spilled))
	e.stats.spilled.Add(t.spilled)
	e.health.set(func(h *health) { h.overBudget = t.overBudget })
	e.stats.coldReads.Add(t.coldReads)
	e.metrics.dedupIDs.Set(float64(t.dedupIDs))
	e.metrics.dedupBytes.Set(float64(t.dedupBytes))
	for _, d := range t.dead {
		e.metrics.deadLetters.WithLabelValues(string(d.Reason)).Inc()
	}
	e.stats.deadLetters.Add(uint64(len(t.dead)))
	var dups uint64
	for meter, n := range t.duplicates {
		e.metrics.duplicates.WithLabelValues(meter).Add(float64(n))
		dups += n
	}
	e.stats.duplicates.Add(dups)
	for _, a := range t.actions {
		e.metrics.actions.WithLabelValues(string(a)).Inc()
	}
	e.stats.actions.Add(uint64(len(t.actions)))
	e.metrics.credits.Add(float64(t.credits))
	e.stats.credits.Add(uint64(t.credits))
	e.metrics.windowsEmitted.WithLabelValues("1").Add(float64(t.finals))
	e.metrics.windowsEmitted.WithLabelValues("0").Add(float64(t.rows - t.finals))
	e.stats.windowsEmitted.Add(uint64(t.rows))
	e.stats.revenueMu.Lock()
	for currency, delta := range t.revenue {
		total := e.stats.revenue[currency].Add(delta)
		e.stats.revenue[currency] = total
		e.metrics.ratedAmount.WithLabelValues(currency).Set(total.InexactFloat64())
	}
	e.stats.revenueMu.Unlock()
}
