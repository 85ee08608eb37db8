package engine

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/tally-billing/tally/state"
)

// dispatchInputs is what the dispatcher reads from.
type dispatchInputs struct {
	partitions []*partitionProgress
	inbound    <-chan inboundBatch
	// discovered brings partitions that appeared while running; the
	// dispatcher adds each and starts its reader with startReader.
	discovered  <-chan PartitionID
	startReader func(index int, p *partitionProgress) error
}

// dispatcher is the single goroutine that routes events to shards, tracks
// offsets and watermarks, and cuts checkpoints. Because it alone sends to the
// shards and their channels are FIFO, a barrier sent to every shard right
// after the offsets are recorded is a consistent cut: every record before
// those offsets is in the shards' state at the barrier, and none after.
type dispatcher struct {
	e      *Engine
	inputs dispatchInputs
	writes chan<- *pendingCheckpoint

	partitions []*partitionProgress
	// seq is the last checkpoint cut, wm the watermark (it never goes back).
	seq uint64
	wm  int64
	// dead holds the decoders' dead letters since the last cut.
	dead         []DeadLetter
	lastEmitOpen time.Time
	paused       bool
	// lastCut is when the last checkpoint was cut (by the real clock, which
	// paces the timers; e.now may be a test's); actionCut fires when a
	// queued action's early checkpoint is due (nil: none asked for).
	lastCut     time.Time
	actionTimer *time.Timer
	actionCut   <-chan time.Time
	// pending is a checkpoint asked for (Engine.Checkpoint), cut once the
	// offsets it names are dispatched.
	pending *checkpointRequest
	// Topic identities and partition counts seen for the first time go
	// into the next checkpoint (a crash before it finds them again at
	// start).
	unrecordedTopicIDs map[string]string
	unrecordedCounts   map[string]int32
}

func (e *Engine) newDispatcher(inputs dispatchInputs, writes chan<- *pendingCheckpoint) *dispatcher {
	return &dispatcher{e: e, inputs: inputs, writes: writes, partitions: inputs.partitions,
		seq: e.committedSeq.Load(), wm: e.stats.watermarkNs.Load(), lastEmitOpen: e.now(), lastCut: time.Now(),
		unrecordedTopicIDs: e.unrecordedTopicIDs, unrecordedCounts: e.unrecordedCounts}
}

// run dispatches until the engine stops. It returns graceful=true after
// Shutdown's final checkpoint was handed over.
func (d *dispatcher) run(ctx context.Context) (graceful bool, err error) {
	e := d.e
	ticker := time.NewTicker(e.cfg.CheckpointInterval)
	defer ticker.Stop()
	for {
		in := d.backpressure()
		select {
		case <-ctx.Done():
			return false, context.Cause(ctx)
		case <-e.stop:
			if err := d.cut(ctx, e.now(), true); err != nil {
				return false, err
			}
			return true, nil
		case req := <-e.watermarkRequests:
			// Invariant kept: the watermark never goes back.
			now := e.now()
			d.wm = e.watermark(d.partitions, now, max(d.wm, req.atNs))
			if err := d.cut(ctx, now, false); err != nil {
				return false, err
			}
			req.reply <- d.seq
		case req := <-e.checkpointRequests:
			d.pending = &req
			if err := d.requested(ctx); err != nil {
				return false, err
			}
		case <-ticker.C:
			if d.paused {
				continue // nothing new to cut while no input is taken
			}
			now := e.now()
			d.wm = e.watermark(d.partitions, now, d.wm)
			if err := d.cut(ctx, now, false); err != nil {
				return false, err
			}
		case <-e.actionQueued:
			if d.actionCut == nil {
				wait := max(actionCheckpointSpacing-time.Since(d.lastCut), 0)
				d.actionTimer = time.NewTimer(wait)
				d.actionCut = d.actionTimer.C
			}
		case <-d.actionCut:
			d.actionTimer, d.actionCut = nil, nil
			if d.backpressure() == nil {
				// Paused by backpressure (looked at now, not when the loop
				// began): the action is still due, so look again shortly
				// rather than wait for the ticker.
				d.actionTimer = time.NewTimer(actionCheckpointSpacing)
				d.actionCut = d.actionTimer.C
				continue
			}
			now := e.now()
			d.wm = e.watermark(d.partitions, now, d.wm)
			if err := d.cut(ctx, now, false); err != nil {
				return false, err
			}
			// The next regular checkpoint is an interval after this one,
			// not a fraction of it.
			ticker.Reset(e.cfg.CheckpointInterval)
		case id := <-d.inputs.discovered:
			p := newPartitionProgress(id, e.now())
			d.partitions = append(d.partitions, p)
			if err := d.inputs.startReader(len(d.partitions)-1, p); err != nil {
				return false, err
			}
		case b := <-in:
			if err := d.take(ctx, b); err != nil {
				return false, err
			}
			if err := d.requested(ctx); err != nil {
				return false, err
			}
		}
	}
}

// backpressure returns the inbound channel, or nil (no input taken) while
// the sinks are too far behind: readers then block on the full inbound
// queue and stop fetching.
func (d *dispatcher) backpressure() <-chan inboundBatch {
	e := d.e
	in := d.inputs.inbound
	behind := e.undeliveredCheckpoints()
	if behind >= uint64(e.cfg.MaxUndeliveredCheckpoints) {
		in = nil
	}
	if p := in == nil; p != d.paused {
		d.paused = p
		e.health.set(func(h *health) { h.paused = p })
		if p {
			e.metrics.backpressure.Set(1)
			e.log.Warn("sinks behind; pausing consumption", "undelivered_checkpoints", behind)
		} else {
			e.metrics.backpressure.Set(0)
			e.log.Info("sinks caught up; resuming consumption")
		}
	}
	return in
}

// take routes one decoded fetch to the shards and moves its partition's
// offset and the watermark.
func (d *dispatcher) take(ctx context.Context, b inboundBatch) error {
	e := d.e
	p := d.partitions[b.partition]
	p.fetch.taken()
	if p.nextOffset == OffsetEarliest && b.logStart > 0 {
		e.noteUnreadStart(p.id, b.logStart)
	}
	if b.nextOffset <= p.nextOffset {
		return fmt.Errorf("engine: partition %s went back from offset %d to %d", p.id, p.nextOffset, b.nextOffset)
	}
	p.nextOffset, p.highWater, p.lastRecordAt = b.nextOffset, b.highWater, e.now()
	p.maxEventTimeNs = max(p.maxEventTimeNs, b.maxEventTimeNs)
	// Events carry the watermark from before their batch, so a batch never
	// makes its own records late.
	decoded, routed := 0, 0
	for _, idx := range b.shards {
		if len(idx) > 0 {
			routed++
		}
	}
	b.events.pending.Store(int32(routed))
	for i, idx := range b.shards {
		if len(idx) == 0 {
			continue
		}
		decoded += len(idx)
		select {
		case e.shards[i].in <- shardMsg{batch: b.events, idx: idx, watermarkNs: d.wm}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	d.wm = e.watermark(d.partitions, p.lastRecordAt, d.wm)
	d.dead = append(d.dead, b.dead...)
	e.stats.consumed.Add(uint64(b.records))
	e.metrics.recordsConsumed.Add(float64(b.records))
	e.metrics.recordsDecoded.Add(float64(decoded))
	lag := max(p.highWater-p.nextOffset, 0)
	e.metrics.consumerLag.WithLabelValues(p.id.Topic, strconv.Itoa(int(p.id.Partition))).Set(float64(lag))
	var total int64
	for _, q := range d.partitions {
		if q.highWater > 0 {
			total += max(q.highWater-q.nextOffset, 0)
		}
	}
	e.stats.lag.Store(total)
	return nil
}

// requested cuts the pending checkpoint once its offsets are dispatched.
func (d *dispatcher) requested(ctx context.Context) error {
	if d.pending == nil {
		return nil
	}
	for _, p := range d.partitions {
		if want := d.pending.offsets[p.id]; want > 0 && p.nextOffset < want {
			return nil
		}
	}
	now := d.e.now()
	d.wm = d.e.watermark(d.partitions, now, d.wm)
	if err := d.cut(ctx, now, false); err != nil {
		return err
	}
	d.pending.reply <- d.seq
	d.pending = nil
	return nil
}

// cut takes a checkpoint: it records the offsets, sends every shard a
// barrier and hands the cut to the writer. final is the shutdown
// checkpoint: it also emits open windows as provisional revisions, so that
// sinks hold everything consumed when the engine stops; not when the task
// moves to another instance (handOver), which goes on with them at once:
// the task's pause would be spent emitting rows nobody waits for.
func (d *dispatcher) cut(ctx context.Context, now time.Time, final bool) error {
	e := d.e
	d.seq++
	// Every action queued before this cut is in it (its shard asked before
	// the barrier), so an early checkpoint asked for is no longer due.
	if d.actionTimer != nil {
		d.actionTimer.Stop()
		d.actionTimer, d.actionCut = nil, nil
	}
	emitOpen := (final && !e.handingOver.Load()) || e.cfg.EmitOpenEvery > 0 && now.Sub(d.lastEmitOpen) >= e.cfg.EmitOpenEvery
	if d.pending != nil {
		emitOpen = emitOpen || d.pending.emitOpen
	}
	if emitOpen {
		d.lastEmitOpen = now
	}
	cp := &pendingCheckpoint{seq: d.seq, cutAt: now, deadLetters: d.dead, watermarkNs: d.wm,
		replies: make(chan *shardSnapshot, len(e.shards)), topicIDs: d.unrecordedTopicIDs, partitionCounts: d.unrecordedCounts}
	d.dead, d.unrecordedTopicIDs, d.unrecordedCounts = nil, nil, nil
	for _, p := range d.partitions {
		if p.nextOffset >= 0 {
			cp.partitions = append(cp.partitions, state.PartitionProgress{Topic: p.id.Topic, Partition: p.id.Partition,
				NextOffset: p.nextOffset, MaxEventTimeNs: p.maxEventTimeNs})
		}
	}
	cp.base = e.baseDue.Swap(false)
	b := &barrier{seq: d.seq, durableSeq: e.committedSeq.Load(), watermarkNs: d.wm, emitOpen: emitOpen, base: cp.base, replies: cp.replies}
	for _, s := range e.shards {
		select {
		case s.in <- shardMsg{barrier: b}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	select {
	case d.writes <- cp:
		// The spacing of early checkpoints counts from the hand-off: a cut
		// that waited for the writer leaves it time to write.
		d.lastCut = time.Now()
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// watermark returns the engine watermark: the minimum over active partitions
// of (highest event time − allowed lateness). A partition is active until it
// has had nothing to give for IdleTimeout: its reader has been asking that
// long, nothing it read waits to be dispatched, and the dispatcher took
// nothing from it for as long (counted from start for one that never spoke).
// Time spent paused by backpressure, with records waiting, never counts.
// When every partition is idle, the watermark is the furthest any got;
// an active partition without events yet holds the watermark where it is,
// so the order partitions are first read in cannot close windows early.
// Invariant: the watermark never goes back, so a closed window stays closed.
func (e *Engine) watermark(partitions []*partitionProgress, now time.Time, prev int64) int64 {
	wm := int64(minWatermark)
	found, active := false, false
	furthest := int64(minWatermark) // over idle partitions with events
	for _, p := range partitions {
		// Caught up: the last high-water mark the partition reported is
		// read. A reader asking a broker that is down is not idle while
		// records it reported wait (before its first fetch nothing is
		// known, and the timeout counts from start).
		caughtUp := p.highWater == 0 || p.highWater <= p.nextOffset
		if now.Sub(p.lastRecordAt) > e.cfg.IdleTimeout && caughtUp && p.fetch.idleFor(now, e.cfg.IdleTimeout) {
			if p.maxEventTimeNs != minWatermark {
				furthest = max(furthest, p.maxEventTimeNs-int64(e.cfg.AllowedLateness))
			}
			continue
		}
		active = true
		if p.maxEventTimeNs == minWatermark {
			found, wm = false, minWatermark
			break
		}
		if pw := p.maxEventTimeNs - int64(e.cfg.AllowedLateness); !found || pw < wm {
			wm, found = pw, true
		}
	}
	e.stats.idle.Store(!active)
	if !active && furthest != minWatermark {
		// Every partition had nothing to give for idleTimeout: none holds
		// time back, so it is as far as the furthest one got (the end of a
		// bounded input, a quiet night). Without this the last windows and
		// periods of a drained stream never closed.
		wm, found = furthest, true
	}
	if !found || wm < prev {
		wm = prev
	}
	e.stats.watermarkNs.Store(wm)
	if wm != minWatermark {
		e.metrics.watermark.Set(float64(wm) / 1e9)
	}
	return wm
}
