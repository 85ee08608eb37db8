package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

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
	// batchRows bounds the entries of one write.
	batchRows int

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
		e.workers = append(e.workers, &sinkWorker{name: s.Name(), stream: state.StreamRated, batchRows: e.cfg.sinkBatchRows(s),
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
		e.workers = append(e.workers, &sinkWorker{name: dl.Name(), stream: state.StreamDeadLetter, batchRows: e.cfg.sinkBatchRows(dl),
			write: func(ctx context.Context, entries [][]byte) error {
				letters, err := decodeEntries[DeadLetter](entries)
				if err != nil {
					return err
				}
				return dl.WriteDeadLetters(ctx, letters)
			}})
	}
	for _, as := range e.cfg.ActionSinks {
		e.workers = append(e.workers, &sinkWorker{name: as.Name(), stream: state.StreamProvisioning, batchRows: e.cfg.sinkBatchRows(as),
			write: func(ctx context.Context, entries [][]byte) error {
				actions, err := decodeEntries[ProvisioningAction](entries)
				if err != nil {
					return err
				}
				return as.WriteActions(ctx, actions)
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
	batch := w.batchRows
	// The entries and their bytes, copied together; reused from batch to
	// batch, as a sink keeps nothing of what it was given once it returns.
	var entries [][]byte
	var buf []byte
	for {
		committed, ok := e.waitCommitted(ctx, w)
		if !ok {
			return nil
		}
		from, _ := w.progress()
		entries, buf = entries[:0], buf[:0]
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
	err := Backoff{Min: sinkRetryMin, Max: sinkRetryMax}.Retry(ctx, func(attempt int) error {
		start := time.Now()
		if err := w.write(ctx, entries); err != nil {
			return err
		}
		e.metrics.sinkBatchDuration.WithLabelValues(w.name).Observe(time.Since(start).Seconds())
		e.metrics.sinkRows.WithLabelValues(w.name).Add(float64(len(entries)))
		if attempt > 1 {
			e.log.Info("sink recovered", "sink", w.name, "attempts", attempt)
			e.health.set(func(h *health) { delete(h.failing, w.name) })
		}
		return nil
	}, func(attempt int, err error, wait time.Duration) {
		e.metrics.sinkErrors.WithLabelValues(w.name).Inc()
		e.health.set(func(h *health) {
			if h.failing == nil {
				h.failing = make(map[string]error)
			}
			h.failing[w.name] = err
		})
		e.log.Warn("sink write failed; retrying", "sink", w.name, "rows", len(entries), "attempt", attempt, "retry_in", wait, "err", errorText(err))
	})
	return err == nil
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

// progressCommitTimeout bounds a graceful stop's last commit, of the sinks'
// progress, when the changelog is out of reach.
const progressCommitTimeout = 5 * time.Second

var errProgressNotRecorded = errors.New("the sinks' progress was not recorded")

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
	// Its own bound: the stop's (commitCtx) may be spent by now on the
	// final checkpoint and the sinks.
	pctx, cancel := context.WithTimeoutCause(ctx, progressCommitTimeout, errProgressNotRecorded)
	defer cancel()
	if err := e.commit(pctx, cp); err != nil {
		if errors.Is(err, errProgressNotRecorded) {
			// Only the sinks' progress is not recorded: the next start
			// delivers the last checkpoints' rows again (idempotent).
			e.log.Warn("stopping without recording the sinks' progress: the changelog did not take it in time", "timeout", progressCommitTimeout, "err", err)
			return nil
		}
		return fmt.Errorf("engine: record sink progress at shutdown: %w", err)
	}
	e.committedSeq.Store(committed + 1)
	return nil
}
