package engine

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// Rater prices a quantity of a meter for a customer's window. It must be safe
// for concurrent use by all shards and deterministic: the same arguments give
// the same charge, so that replay reproduces the same rows.
type Rater interface {
	Rate(customer, meter string, windowStart time.Time, quantity decimal.Decimal) (rating.Charge, error)
}

// timeRules are the event-time bounds every shard applies identically.
type timeRules struct {
	windowNs        int64
	graceNs         int64
	reviseHorizonNs int64
}

// lateCutoff returns the start of the oldest window that still accepts
// records at watermark wm: a record with event time before it is late. Every
// window starting before it has ended at least reviseHorizon before wm.
func (r timeRules) lateCutoff(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return floorDiv(wm-r.reviseHorizonNs, r.windowNs)
}

// closed reports whether the window starting at startNs is closed at wm.
func (r timeRules) closed(startNs, wm int64) bool {
	return wm != minWatermark && startNs+r.windowNs+r.graceNs <= wm
}

// shardMsg is what the dispatcher sends a shard: a batch of events with the
// watermark at dispatch, or a checkpoint barrier. The channel is FIFO, so a
// barrier cuts the shard's input exactly where the dispatcher recorded offsets.
type shardMsg struct {
	events      []Event
	watermarkNs int64
	barrier     *barrier
}

// barrier asks every shard for its part of checkpoint seq.
type barrier struct {
	seq         uint64
	watermarkNs int64
	emitOpen    bool
	replies     chan<- *shardSnapshot
}

// shardSnapshot is one shard's contribution to a checkpoint: everything that
// changed since its previous barrier, already encoded, so the shard can go on
// mutating its maps while the checkpoint is written.
type shardSnapshot struct {
	shard         int
	windowPuts    []state.KV
	windowDeletes [][]byte
	dedupAdds     []state.DedupEntry
	rows          []RatedRow
	deadLetters   []DeadLetter
	revenue       map[string]decimal.Decimal // net change by currency
	duplicates    map[string]uint64          // by meter
	liveWindows   int
	dedupIDs      int
	err           error
}

// shard aggregates the events of the customers hashed to it. All its fields
// are owned by its goroutine (run); it shares nothing, so the per-record path
// takes no lock.
type shard struct {
	index   int
	tenant  string
	rules   timeRules
	rater   Rater
	in      chan shardMsg
	windows map[windowKey]*window
	// byStart indexes windows by start so that eviction visits only old starts.
	byStart map[int64]map[windowKey]*window
	dedup   *dedupSet

	watermarkNs int64
	dirty       []*window
	unemitted   []*window
	deleted     [][]byte
	deadLetters []DeadLetter
	duplicates  map[string]uint64
}

func newShard(index int, tenant string, rules timeRules, rater Rater, queueLen int) *shard {
	return &shard{
		index:       index,
		tenant:      tenant,
		rules:       rules,
		rater:       rater,
		in:          make(chan shardMsg, queueLen),
		windows:     make(map[windowKey]*window),
		byStart:     make(map[int64]map[windowKey]*window),
		dedup:       newDedupSet(),
		watermarkNs: minWatermark,
		duplicates:  make(map[string]uint64),
	}
}

// run processes messages until the channel is closed.
func (s *shard) run() {
	for msg := range s.in {
		if msg.barrier != nil {
			msg.barrier.replies <- s.snapshot(msg.barrier)
			continue
		}
		s.watermarkNs = msg.watermarkNs
		for i := range msg.events {
			s.apply(&msg.events[i])
		}
	}
}

// apply adds one event. Order of checks: a late record is dead-lettered
// before dedup because its dedup bucket may already be expired: the dedup
// horizon covers exactly the windows that still accept records.
func (s *shard) apply(ev *Event) {
	startNs := floorDiv(ev.TimeNs, s.rules.windowNs)
	if startNs < s.rules.lateCutoff(s.watermarkNs) {
		s.deadLetters = append(s.deadLetters, DeadLetter{
			Reason: ReasonLate,
			Detail: fmt.Sprintf("window %s closed for revisions: watermark %s",
				time.Unix(0, startNs).UTC().Format(time.RFC3339), time.Unix(0, s.watermarkNs).UTC().Format(time.RFC3339)),
			Topic: ev.Partition.Topic, Partition: ev.Partition.Partition, Offset: ev.Offset, Raw: ev.Raw,
		})
		return
	}
	routing := routingHash(ev.Customer)
	if s.dedup.seen(floorDiv(ev.TimeNs, dedupBucketNs), eventIDHash(ev.Source, ev.ID), routing) {
		s.duplicates[ev.Meter]++
		return
	}
	key := windowKey{meter: ev.Meter, customer: ev.Customer, groupKey: ev.GroupKey, startNs: startNs}
	w := s.windows[key]
	if w == nil {
		w = s.addWindow(key)
	}
	w.count++
	w.sum = w.sum.Add(ev.Value)
	s.touch(w)
}

func (s *shard) addWindow(key windowKey) *window {
	w := &window{key: key}
	s.windows[key] = w
	byStart := s.byStart[key.startNs]
	if byStart == nil {
		byStart = make(map[windowKey]*window)
		s.byStart[key.startNs] = byStart
	}
	byStart[key] = w
	return w
}

// touch marks w as changed since both its last checkpoint and its last emission.
func (s *shard) touch(w *window) {
	if !w.dirty {
		w.dirty = true
		s.dirty = append(s.dirty, w)
	}
	w.changed = true
	if !w.queued {
		w.queued = true
		s.unemitted = append(s.unemitted, w)
	}
}

// snapshot emits the windows due at the barrier's watermark, evicts windows
// past the revision horizon and returns everything changed since the previous
// barrier. Rows are only handed out inside a snapshot, so a row never leaves
// the engine before the checkpoint that holds its window's state is durable.
func (s *shard) snapshot(b *barrier) *shardSnapshot {
	s.watermarkNs = b.watermarkNs
	snap := &shardSnapshot{shard: s.index, revenue: make(map[string]decimal.Decimal)}

	// 1. Emit: closed windows with changes, and open ones when asked to.
	kept := s.unemitted[:0]
	for _, w := range s.unemitted {
		final := s.rules.closed(w.key.startNs, b.watermarkNs)
		if !final && !b.emitOpen {
			kept = append(kept, w)
			continue
		}
		row, err := s.emit(w, final)
		if err != nil {
			snap.err = err
			return snap
		}
		snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(w.emittedAmount))
		w.emittedAmount = row.Amount
		snap.rows = append(snap.rows, row)
		w.queued = false
		if !w.dirty {
			w.dirty = true
			s.dirty = append(s.dirty, w)
		}
	}
	clear(s.unemitted[len(kept):])
	s.unemitted = kept

	// 2. Evict windows no record may revise any more. They were emitted in
	// step 1 at the latest, because reviseHorizon >= grace.
	cutoff := s.rules.lateCutoff(b.watermarkNs)
	for startNs, ws := range s.byStart {
		if startNs >= cutoff {
			continue
		}
		for key, w := range ws {
			if w.changed {
				snap.err = fmt.Errorf("engine: invariant broken: evicting window %v with unemitted changes", key)
				return snap
			}
			delete(s.windows, key)
			w.dirty = false // dropped from the dirty list below
			s.deleted = append(s.deleted, encodeWindowKey(key))
		}
		delete(s.byStart, startNs)
	}
	s.dedup.expire(floorDiv(cutoff, dedupBucketNs))

	// 3. Encode what changed.
	snap.windowPuts = make([]state.KV, 0, len(s.dirty))
	for _, w := range s.dirty {
		if !w.dirty {
			continue // evicted
		}
		snap.windowPuts = append(snap.windowPuts, state.KV{Key: encodeWindowKey(w.key), Value: encodeWindowValue(w)})
		w.dirty = false
	}
	clear(s.dirty)
	s.dirty = s.dirty[:0]
	snap.windowDeletes, s.deleted = s.deleted, nil
	snap.dedupAdds = make([]state.DedupEntry, len(s.dedup.added))
	for i, a := range s.dedup.added {
		snap.dedupAdds[i] = state.DedupEntry{BucketNs: a.bucketNs, IDHash: a.id, RoutingHash: a.routingHash}
	}
	s.dedup.added = s.dedup.added[:0]
	snap.deadLetters, s.deadLetters = s.deadLetters, nil
	snap.duplicates, s.duplicates = s.duplicates, make(map[string]uint64)
	snap.liveWindows = len(s.windows)
	snap.dedupIDs = s.dedup.size()
	return snap
}

// emit rates w and returns its next revision. Invariant: revisions of a
// window only grow, and each carries the window's full totals.
func (s *shard) emit(w *window, final bool) (RatedRow, error) {
	start := time.Unix(0, w.key.startNs).UTC()
	charge, err := s.rater.Rate(w.key.customer, w.key.meter, start, w.sum)
	if err != nil {
		return RatedRow{}, fmt.Errorf("engine: rate window %s/%s/%s: %w", w.key.meter, w.key.customer, start.Format(time.RFC3339), err)
	}
	w.revision++
	w.changed = false
	return RatedRow{
		Tenant:      s.tenant,
		Meter:       w.key.meter,
		Customer:    w.key.customer,
		GroupKey:    w.key.groupKey,
		WindowStart: start,
		WindowEnd:   start.Add(time.Duration(s.rules.windowNs)),
		Quantity:    w.sum,
		Count:       w.count,
		Amount:      charge.Amount,
		Currency:    charge.Currency,
		UnitPrice:   charge.UnitPrice,
		Revision:    w.revision,
		Final:       final,
	}, nil
}

// restoreWindow installs a window loaded from the store before run starts.
func (s *shard) restoreWindow(key windowKey, w *window) {
	w.key = key
	s.windows[key] = w
	byStart := s.byStart[key.startNs]
	if byStart == nil {
		byStart = make(map[windowKey]*window)
		s.byStart[key.startNs] = byStart
	}
	byStart[key] = w
	if w.changed {
		w.queued = true
		s.unemitted = append(s.unemitted, w)
	}
}
