package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/state"
)

// The outbox: a checkpoint writes the rows and dead letters it produced into
// the store, in the same batch as the state that produced them. Sink workers
// then read them from the store and deliver them, each sink at its own pace,
// recording its position in later checkpoints. So a row is delivered only
// once its window's state is durable, delivery survives restarts (it resumes
// at the recorded position: at least once), and idempotent sinks turn that
// into exactly once.

// Sink retry backoff bounds.
const (
	sinkRetryMin = 100 * time.Millisecond
	sinkRetryMax = 5 * time.Second
)

// sinkWorker delivers one outbox stream to one sink.
type sinkWorker struct {
	name   string
	stream state.Stream
	write  func(ctx context.Context, entries [][]byte) error

	mu sync.Mutex
	// pos is the next outbox position to deliver.
	pos state.OutboxPos
	// delivered is the last checkpoint whose entries are all delivered.
	delivered uint64
}

func (w *sinkWorker) progress() (state.OutboxPos, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pos, w.delivered
}

func (e *Engine) startSinks(ctx context.Context, wg *sync.WaitGroup, fatal func(error)) error {
	e.workers = nil
	for _, s := range e.sinks {
		e.workers = append(e.workers, &sinkWorker{name: s.Name(), stream: state.StreamRated,
			write: func(ctx context.Context, entries [][]byte) error {
				rows := make([]RatedRow, len(entries))
				var err error
				for i, b := range entries {
					if err = decodeRow(b, &rows[i]); err != nil {
						err = fmt.Errorf("decode outbox row: %w", err)
						break
					}
				}
				if err != nil {
					return err
				}
				return s.Write(ctx, rows)
			}})
	}
	for _, dl := range e.deadLetters {
		e.workers = append(e.workers, &sinkWorker{name: dl.Name(), stream: state.StreamDeadLetter,
			write: func(ctx context.Context, entries [][]byte) error {
				letters, err := decodeEntries[DeadLetter](entries)
				if err != nil {
					return err
				}
				return dl.WriteDeadLetters(ctx, letters)
			}})
	}
	seen := make(map[string]bool)
	for _, w := range e.workers {
		if seen[w.name] {
			return fmt.Errorf("engine: two sinks are named %q; names key their progress and must differ", w.name)
		}
		seen[w.name] = true
		pos, err := e.store.SinkProgress(w.name)
		if err != nil {
			return err
		}
		w.pos = pos
		if pos.Seq > 0 {
			w.delivered = pos.Seq - 1
		}
		wg.Go(func() { fatal(e.deliver(ctx, w)) })
	}
	return nil
}

// decodeEntries decodes outbox entries (JSON) into values of T.
func decodeEntries[T any](entries [][]byte) ([]T, error) {
	out := make([]T, len(entries))
	for i, b := range entries {
		if err := json.Unmarshal(b, &out[i]); err != nil {
			return nil, fmt.Errorf("decode outbox entry: %w", err)
		}
	}
	return out, nil
}

// deliver runs one sink worker until ctx ends.
func (e *Engine) deliver(ctx context.Context, w *sinkWorker) error {
	batch := e.cfg.SinkBatchRows
	for {
		committed, ok := e.waitCommitted(ctx, w)
		if !ok {
			return nil
		}
		from, _ := w.progress()
		var entries [][]byte
		var buf []byte // the entries' bytes, copied together
		var last state.OutboxPos
		err := e.store.Outbox(w.stream, from, committed, batch, func(pos state.OutboxPos, v []byte) error {
			start := len(buf)
			buf = append(buf, v...)
			entries = append(entries, buf[start:len(buf):len(buf)])
			last = pos
			return nil
		})
		if err != nil {
			return fmt.Errorf("engine: sink %s: read outbox: %w", w.name, err)
		}
		if len(entries) > 0 {
			if !e.writeWithRetry(ctx, w, entries) {
				return nil
			}
		}
		w.mu.Lock()
		if len(entries) < batch {
			// Everything through committed is delivered.
			w.pos, w.delivered = state.OutboxPos{Seq: committed + 1}, committed
		} else {
			w.pos = state.OutboxPos{Seq: last.Seq, Index: last.Index + 1}
			w.delivered = last.Seq - 1
		}
		w.mu.Unlock()
		e.metrics.sinkLagCheckpoints.WithLabelValues(w.name).Set(float64(e.committedSeq.Load() - w.delivered))
		e.wakeWaiters()
	}
}

// writeWithRetry writes entries until it succeeds or ctx ends. Rows are never
// skipped: a sink that keeps failing keeps the outbox growing until the
// backpressure bound pauses consumption.
func (e *Engine) writeWithRetry(ctx context.Context, w *sinkWorker, entries [][]byte) bool {
	backoff := sinkRetryMin
	for attempt := 1; ; attempt++ {
		start := time.Now()
		err := w.write(ctx, entries)
		if err == nil {
			e.metrics.sinkBatchDuration.WithLabelValues(w.name).Observe(time.Since(start).Seconds())
			e.metrics.sinkRows.WithLabelValues(w.name).Add(float64(len(entries)))
			if attempt > 1 {
				e.log.Info("sink recovered", "sink", w.name, "attempts", attempt)
				e.health.set(func(h *health) { delete(h.failing, w.name) })
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		e.metrics.sinkErrors.WithLabelValues(w.name).Inc()
		e.health.set(func(h *health) {
			if h.failing == nil {
				h.failing = make(map[string]error)
			}
			h.failing[w.name] = err
		})
		e.log.Warn("sink write failed; retrying", "sink", w.name, "rows", len(entries), "attempt", attempt, "retry_in", backoff, "err", errorText(err))
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return false
		}
		backoff = min(backoff*2, sinkRetryMax)
	}
}

// waitCommitted blocks until a checkpoint newer than w's delivered one is
// durable, and returns it; false when ctx ends.
func (e *Engine) waitCommitted(ctx context.Context, w *sinkWorker) (uint64, bool) {
	e.commitMu.Lock()
	defer e.commitMu.Unlock()
	for {
		if ctx.Err() != nil {
			return 0, false
		}
		committed := e.committedSeq.Load()
		if _, delivered := w.progress(); committed > delivered {
			return committed, true
		}
		e.committed.Wait()
	}
}

// wakeWaiters wakes every goroutine waiting on commits or deliveries.
func (e *Engine) wakeWaiters() {
	e.commitMu.Lock()
	e.committed.Broadcast()
	e.commitMu.Unlock()
}

// undeliveredCheckpoints is how many durable checkpoints the slowest sink
// has not fully delivered.
func (e *Engine) undeliveredCheckpoints() uint64 {
	committed := e.committedSeq.Load()
	var behind uint64
	for _, w := range e.workers {
		if _, d := w.progress(); committed > d {
			behind = max(behind, committed-d)
		}
	}
	return behind
}

// outboxMarks returns each sink's position and, per stream, the position
// before which every sink of the stream has delivered.
func (e *Engine) outboxMarks(committed uint64) (map[string]state.OutboxPos, map[state.Stream]state.OutboxPos) {
	progress := make(map[string]state.OutboxPos, len(e.workers))
	trim := make(map[state.Stream]state.OutboxPos)
	for _, w := range e.workers {
		pos, _ := w.progress()
		progress[w.name] = pos
		if t, ok := trim[w.stream]; !ok || pos.Less(t) {
			trim[w.stream] = pos
		}
	}
	for stream, pos := range trim {
		if pos.Seq > committed+1 {
			trim[stream] = state.OutboxPos{Seq: committed + 1}
		}
		if pos.Seq == 0 && pos.Index == 0 {
			delete(trim, stream)
		}
	}
	return progress, trim
}

// commit makes cp durable: in the store, and first in the task's changelog
// when it has one (the checkpoint exists once the changelog transaction
// committed; see docs/scale-out.md).
func (e *Engine) commit(ctx context.Context, cp *state.Checkpoint) error {
	if e.cfg.Changelog == nil {
		return e.store.Commit(cp)
	}
	return e.store.CommitPublished(cp, func(ops []state.Op) (int64, error) {
		return e.cfg.Changelog.Append(ctx, ops)
	})
}

// drainSinks waits until every sink delivered the last checkpoint (or
// DrainTimeout passed), then records their progress, after a graceful
// shutdown.
func (e *Engine) drainSinks(ctx context.Context) error {
	committed := e.committedSeq.Load()
	drainCtx := ctx
	if e.cfg.DrainTimeout > 0 {
		var cancel context.CancelFunc
		drainCtx, cancel = context.WithTimeout(ctx, e.cfg.DrainTimeout)
		defer cancel()
		stop := context.AfterFunc(drainCtx, e.wakeWaiters)
		defer stop()
	}
	e.commitMu.Lock()
	for e.undeliveredCheckpoints() > 0 && drainCtx.Err() == nil {
		e.committed.Wait()
	}
	e.commitMu.Unlock()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if drainCtx.Err() != nil {
		// A sink that cannot succeed must not hold a stop forever. What it
		// missed is durable in the outbox: the next start delivers it.
		for _, w := range e.workers {
			if _, d := w.progress(); d < committed {
				e.log.Warn("stopping with rows not delivered to a sink: they are safe in the outbox and go out after the next start",
					"sink", w.name, "undelivered_checkpoints", committed-d, "drain_timeout", e.cfg.DrainTimeout)
			}
		}
	}
	progress, trim := e.outboxMarks(committed)
	cp := &state.Checkpoint{Seq: committed + 1, SinkProgress: progress, OutboxTrim: trim}
	if err := e.commit(ctx, cp); err != nil {
		return fmt.Errorf("engine: record sink progress at shutdown: %w", err)
	}
	e.committedSeq.Store(committed + 1)
	return nil
}

// writeCheckpoints is the checkpoint writer: it gathers each cut's shard
// snapshots, commits them with the cut's offsets and outbox in one synced
// batch, then publishes the new durable sequence.
func (e *Engine) writeCheckpoints(ctx context.Context, writes <-chan *pendingCheckpoint) error {
	var lastDedupExpiry, lastFinalized int64
	for pc := range writes {
		cp := &state.Checkpoint{Seq: pc.seq, Partitions: pc.partitions, Outbox: make(map[state.Stream][][]byte),
			WatermarkNs: pc.watermarkNs, HasWatermark: pc.watermarkNs != minWatermark, TopicIDs: pc.topicIDs, PartitionCounts: pc.partitionCounts}
		dead := pc.deadLetters
		revenue := make(map[string]decimal.Decimal)
		duplicates := make(map[string]uint64)
		var rows []RatedRow
		live, dedupIDs := 0, 0
		var coldReads, spilled uint64
		overBudget := false
		snaps := make([]*shardSnapshot, 0, len(e.shards))
		var nPuts, nDedup, nRows int
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
			nPuts, nDedup, nRows = nPuts+len(snap.windowPuts), nDedup+len(snap.dedupAdds), nRows+len(snap.rows)
		}
		cp.WindowPuts = make([]state.KV, 0, nPuts)
		cp.DedupAdds = make([]state.DedupEntry, 0, nDedup)
		rows = make([]RatedRow, 0, nRows)
		for _, snap := range snaps {
			cp.WindowPuts = append(cp.WindowPuts, snap.windowPuts...)
			cp.SubscriptionPuts = append(cp.SubscriptionPuts, snap.subsPuts...)
			cp.WindowDeletes = append(cp.WindowDeletes, snap.windowDeletes...)
			cp.DedupAdds = append(cp.DedupAdds, snap.dedupAdds...)
			rows = append(rows, snap.rows...)
			dead = append(dead, snap.deadLetters...)
			for currency, delta := range snap.revenue {
				revenue[currency] = revenue[currency].Add(delta)
			}
			for meter, n := range snap.duplicates {
				duplicates[meter] += n
			}
			live += snap.liveWindows
			coldReads += snap.coldReads
			spilled += snap.spilled
			overBudget = overBudget || snap.overBudget
			dedupIDs += snap.dedupIDs
		}
		// Rows are encoded into one buffer (Pebble copies them into its
		// batch); a slice taken before the buffer grows keeps its bytes.
		if len(rows) > 0 {
			buf := make([]byte, 0, 160*len(rows))
			encoded := make([][]byte, len(rows))
			for i := range rows {
				start := len(buf)
				buf = encodeRow(buf, &rows[i])
				encoded[i] = buf[start:len(buf):len(buf)]
			}
			cp.Outbox[state.StreamRated] = encoded
		}
		for i := range dead {
			b, err := json.Marshal(&dead[i])
			if err != nil {
				return fmt.Errorf("engine: encode dead letter: %w", err)
			}
			cp.Outbox[state.StreamDeadLetter] = append(cp.Outbox[state.StreamDeadLetter], b)
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
		cp.SinkProgress, cp.OutboxTrim = e.outboxMarks(pc.seq - 1)

		if e.cfg.FaultHook != nil {
			e.cfg.FaultHook("checkpoint")
		}
		if err := e.commit(ctx, cp); err != nil {
			return fmt.Errorf("engine: checkpoint %d not durable, stopping so nothing unpersisted is acknowledged: %w", pc.seq, err)
		}
		// From here the checkpoint is durable. Its counters are added before
		// its sequence is published, so that whoever sees the sequence also
		// sees what it counted.
		e.metrics.checkpointDuration.Observe(time.Since(pc.cutAt).Seconds())
		e.metrics.checkpointBytes.Observe(float64(len(cp.WindowPuts) + len(cp.WindowDeletes) + len(cp.DedupAdds) + len(rows) + len(dead)))
		e.metrics.checkpointSeq.Set(float64(pc.seq))
		e.metrics.liveWindows.Set(float64(live))
		e.metrics.coldReads.Add(float64(coldReads))
		e.metrics.spilled.Add(float64(spilled))
		e.stats.spilled.Add(spilled)
		e.health.set(func(h *health) { h.overBudget = overBudget })
		e.stats.coldReads.Add(coldReads)
		e.metrics.dedupIDs.Set(float64(dedupIDs))
		for _, d := range dead {
			e.metrics.deadLetters.WithLabelValues(string(d.Reason)).Inc()
		}
		e.stats.deadLetters.Add(uint64(len(dead)))
		var dups uint64
		for meter, n := range duplicates {
			e.metrics.duplicates.WithLabelValues(meter).Add(float64(n))
			dups += n
		}
		e.stats.duplicates.Add(dups)
		finals := 0
		for _, r := range rows {
			if r.Final {
				finals++
			}
		}
		e.metrics.windowsEmitted.WithLabelValues("1").Add(float64(finals))
		e.metrics.windowsEmitted.WithLabelValues("0").Add(float64(len(rows) - finals))
		e.stats.windowsEmitted.Add(uint64(len(rows)))
		e.stats.revenueMu.Lock()
		for currency, delta := range revenue {
			total := e.stats.revenue[currency].Add(delta)
			e.stats.revenue[currency] = total
			e.metrics.ratedAmount.WithLabelValues(currency).Set(total.InexactFloat64())
		}
		e.stats.revenueMu.Unlock()
		e.committedSeq.Store(pc.seq)
		e.wakeWaiters()
	}
	return nil
}
