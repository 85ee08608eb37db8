package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/state"
)

// shardMsg is what the dispatcher sends a shard: a batch of events with the
// watermark at dispatch, or a checkpoint barrier. The channel is FIFO, so a
// barrier cuts the shard's input exactly where the dispatcher recorded offsets.
type shardMsg struct {
	// batch holds the events, idx this shard's of them, in order.
	batch       *eventBatch
	idx         []int32
	watermarkNs int64
	barrier     *barrier
}

// barrier asks every shard for its part of checkpoint seq.
type barrier struct {
	seq         uint64
	durableSeq  uint64 // the last checkpoint known durable when cut
	watermarkNs int64
	emitOpen    bool
	// base asks for every window in memory, not only the changed ones: the
	// checkpoint replaces the delta log (see state/delta.go).
	base    bool
	replies chan<- *shardSnapshot
}

// shardSnapshot is one shard's contribution to a checkpoint: everything that
// changed since its previous barrier, already encoded, so the shard can go on
// mutating its maps while the checkpoint is written.
type shardSnapshot struct {
	shard int
	// deltaChunks are the shard's delta log chunks (deltaBytes in all),
	// windowPuts the windows merged into their own keys.
	deltaChunks   [][]byte
	deltaBytes    int
	deltaEntries  int
	windowPuts    []state.KV
	windowDeletes [][]byte
	subsPuts      []state.KV
	grantPuts     []state.KV
	slaPuts       []state.KV
	slaDeletes    [][]byte
	// servicePuts and serviceDeletes are shard 0's (slaservice.go).
	servicePuts    []state.KV
	serviceDeletes [][]byte
	// credits counts the SLA credit rows (and revisions) emitted.
	credits   int
	dedupAdds []state.DedupEntry
	// encodedRows are the rows emitted, encoded for the outbox as they are
	// emitted (here, in parallel, rather than by the writer; no slice of
	// RatedRows: a stop emits hundreds of thousands); finals counts the
	// final ones. rowBuf holds them back to back, rowEnds where each ends,
	// until finishRows slices them.
	encodedRows [][]byte
	finals      int
	rowBuf      []byte
	rowEnds     []int
	deadLetters []DeadLetter
	actions     []ProvisioningAction
	revenue     map[string]decimal.Decimal // net change by currency
	duplicates  map[string]uint64          // by meter
	liveWindows int
	dedupIDs    int
	dedupBytes  int
	coldReads   uint64
	spilled     uint64
	overBudget  bool
	err         error
}

// snapshot emits the windows due at the barrier's watermark, evicts windows
// past the revision horizon and returns everything changed since the previous
// barrier. Rows are only handed out inside a snapshot, so a row never leaves
// the engine before the checkpoint that holds its window's state is durable.
func (s *shard) snapshot(b *barrier) *shardSnapshot {
	s.watermarkNs = b.watermarkNs
	s.seq, s.durableSeq = b.seq, b.durableSeq
	snap := &shardSnapshot{shard: s.index, revenue: make(map[string]decimal.Decimal)}
	if s.pending.storeErr != nil {
		snap.err = fmt.Errorf("engine: read state store: %w", s.pending.storeErr)
		return snap
	}
	if snap.err = s.emitDue(b, snap); snap.err != nil {
		return snap
	}
	// Subscribers owe their period fees usage or not: make sure each has
	// its current period's aggregates.
	s.openFeePeriods()
	s.expireGrants(b.watermarkNs)
	if snap.err = s.chargeFees(b.watermarkNs, snap); snap.err != nil {
		return snap
	}
	if snap.err = s.closeSLA(b.watermarkNs, snap); snap.err != nil {
		return snap
	}
	s.evictSLA(b.watermarkNs, snap)
	s.evictServices(b.watermarkNs, snap)
	if snap.err = s.evict(b.watermarkNs); snap.err != nil {
		return snap
	}
	s.deletedThroughNs = b.watermarkNs
	s.dedup.expire(s.rules.dedupMemoryExpiry(b.watermarkNs), s.durableSeq, s.rules.dedupExpiry(b.watermarkNs))
	s.spill()
	if snap.err = s.encodeDelta(b.base, snap); snap.err != nil {
		return snap
	}
	snap.finishRows()
	snap.coldReads, s.pending.coldReads = s.pending.coldReads, 0
	snap.spilled, s.pending.spilled = s.pending.spilled, 0
	snap.overBudget = s.overBudget
	snap.liveWindows = len(s.windows)
	snap.dedupIDs, snap.dedupBytes = s.dedup.size(), s.dedup.memoryBytes()
	s.names.sweep() // the windows that left memory are encoded
	return snap
}

// emitDue emits the windows due at b: closed windows with changes or whose
// last revision was provisional, and open windows with changes when b asks.
func (s *shard) emitDue(b *barrier, snap *shardSnapshot) error {
	// Invariant: a window is in the unemitted lists iff pendingEmission().
	// Only the windows due now are ordered: emission order decides which
	// window an increment of a tiered charge falls to, so it must be
	// deterministic, but sorting every open window at every barrier would
	// cost more than the records.
	var due []*window
	for endNs, ws := range s.unemitted {
		switch {
		case s.rules.closed(endNs, b.watermarkNs):
			due = append(due, ws...) // all final below: none stays queued
			delete(s.unemitted, endNs)
		case b.emitOpen:
			for _, w := range ws {
				if w.changed {
					due = append(due, w) // provisional: stays queued
				}
			}
		}
	}
	s.sortDue(due)
	snap.reserveRows(len(due))
	for _, w := range due {
		final := s.rules.closed(w.endNs, b.watermarkNs)
		row, err := s.emit(w, final)
		if err != nil {
			return err
		}
		snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(w.get(numEmittedAmount)))
		w.set(numEmittedAmount, row.Amount)
		snap.addRow(&row)
		if final {
			w.queued = false
		}
		s.markDirty(w)
	}
	return nil
}

// sortDue puts the windows due at a barrier in emission order. The order
// decides which window an increment of a tiered charge falls to, so within
// a customer it must be the same on every replay: by window start, meter
// name and group key. Customers share no charge, so between them any order
// will do: by the shard's id for them, which sorts with integer compares
// on a flat copy of the keys instead of chasing every window's names (a
// third of a large graceful stop's emission went to that).
func (s *shard) sortDue(due []*window) {
	type dueKey struct {
		customer uint32
		startNs  int64
		w        *window
	}
	keys := make([]dueKey, len(due))
	for i, w := range due {
		keys[i] = dueKey{w.key.customer, w.key.startNs, w}
	}
	slices.SortFunc(keys, func(a, b dueKey) int {
		switch {
		case a.customer != b.customer:
			return cmp.Compare(a.customer, b.customer)
		case a.startNs != b.startNs:
			return cmp.Compare(a.startNs, b.startNs)
		case a.w.key.meter != b.w.key.meter:
			return strings.Compare(s.meter(a.w).Name, s.meter(b.w).Name)
		default:
			return strings.Compare(s.names.str(a.w.key.group), s.names.str(b.w.key.group))
		}
	})
	for i, k := range keys {
		due[i] = k.w
	}
}

// chargeFees emits period fee rows: when a period closes (after its
// windows, emitted by emitDue), and again when late usage changed what it
// charged.
func (s *shard) chargeFees(wm int64, snap *shardSnapshot) error {
	fees := s.feeDue
	s.feeDue = nil
	// closing: closed now, for the first time in this run, or blocked
	// since they closed (resumeDue).
	closing := s.resumeDue
	s.resumeDue = nil
	for endNs, ps := range s.periodsByEnd {
		if s.closedEnds[endNs] || !s.rules.closed(endNs, wm) {
			continue
		}
		s.closedEnds[endNs] = true
		fees = append(fees, ps...)
		closing = append(closing, ps...)
	}
	byName := func(a, b *window) int {
		if c := strings.Compare(s.names.str(a.key.customer), s.names.str(b.key.customer)); c != 0 {
			return c
		}
		if c := strings.Compare(s.meter(a).Name, s.meter(b).Name); c != 0 {
			return c
		}
		return cmp.Compare(a.key.startNs, b.key.startNs)
	}
	slices.SortFunc(fees, byName)
	if s.watchLimits {
		slices.SortFunc(closing, byName) // a customer's actions in period order
		for _, p := range closing {
			s.resumeClosed(p)
		}
	}
	for _, p := range fees {
		p.feeQueued = false
		row, ok, err := s.emitPeriodFee(p)
		if err != nil {
			// A period the plans cannot price (configured subscriptions
			// that mix currencies in it) is reported, not a reason to stop
			// every checkpoint: a dead letter with no source record names
			// it, and its fee row waits for a fix of the configuration.
			s.pending.deadLetters = append(s.pending.deadLetters, DeadLetter{Reason: ReasonRating, Detail: err.Error(), Partition: -1, Offset: -1})
			continue
		}
		if ok {
			snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(p.get(numEmittedAmount)))
			p.set(numEmittedAmount, row.Amount)
			snap.addRow(&row)
			s.markDirty(p)
		}
	}
	s.creditsOnFees(fees)
	return nil
}

// evict takes windows and periods past the memory horizon at wm out of
// memory. Without finalizeAfter no record may revise them any more, so they
// are deleted from the store too (emitDue emitted them at the latest, since
// reviseHorizon >= grace). With it they stay in the store, revisable
// until their period is finalized, and leave memory only once their
// latest state is durable, so that a read-back never sees an older one.
func (s *shard) evict(wm int64) error {
	finalizing := s.rules.finalizeAfterNs > 0
	evict := func(byEnd map[int64][]*window, drop func(*window)) error {
		var err error
		for endNs, ws := range byEnd {
			if s.rules.hot(endNs, wm) {
				continue
			}
			setByEnd(byEnd, endNs, slices.DeleteFunc(ws, func(w *window) bool {
				if err != nil {
					return false
				}
				if !w.key.period && w.pendingEmission() {
					err = fmt.Errorf("engine: invariant broken: evicting window %v before its final revision", s.name(w.key))
					return false
				}
				if finalizing && !s.merged(w) {
					return false // not in its own key yet; a later barrier evicts it
				}
				drop(w)
				s.unindexCustomer(w)
				key := s.leave(w)
				if !finalizing {
					w.dirty = false // dropped from the dirty list below
					s.pending.deleted = append(s.pending.deleted, key)
				}
				return true
			}))
			if err != nil {
				return err
			}
		}
		return nil
	}
	err := evict(s.byEnd, func(w *window) {
		delete(s.windows, w.key)
		s.releaseGroup(w.key)
	})
	if err == nil {
		err = evict(s.periodsByEnd, func(w *window) {
			delete(s.periods, w.key)
			w.dropped = true
		})
	}
	for endNs := range s.closedEnds {
		if _, ok := s.periodsByEnd[endNs]; !ok {
			delete(s.closedEnds, endNs)
		}
	}
	return err
}

// encodeDelta hands snap everything changed since the previous barrier,
// encoded: the dirty windows as delta log chunks (every window in memory
// when base is set), and the windows leaving memory for their own keys.
func (s *shard) encodeDelta(base bool, snap *shardSnapshot) error {
	log := &s.deltaScratch
	log.reset()
	if base {
		// A base holds only what is in memory, and replaces every older
		// chunk: it needs no tombstones.
		for _, w := range s.windows {
			if err := log.add(s.name(w.key), w); err != nil {
				return err
			}
		}
		for _, p := range s.periods {
			if err := log.add(s.name(p.key), p); err != nil {
				return err
			}
		}
		for _, w := range s.pending.dirty {
			w.dirty = false
		}
	} else {
		for _, w := range s.pending.dirty {
			if !w.dirty {
				continue // evicted
			}
			if err := log.add(s.name(w.key), w); err != nil {
				return err
			}
			w.dirty = false
		}
		for _, key := range s.pending.left {
			log.tombstone(key)
		}
	}
	clear(s.pending.left)
	s.pending.left = s.pending.left[:0]
	snap.deltaChunks, snap.deltaBytes = log.finish()
	snap.deltaEntries = log.entries
	// Keys and values go into one buffer (Pebble copies them into its
	// batch): two allocations per snapshot instead of two per window.
	snap.windowPuts = make([]state.KV, 0, len(s.pending.merges))
	buf := make([]byte, 0, 160*len(s.pending.merges))
	for _, w := range s.pending.merges {
		start := len(buf)
		name := s.name(w.key)
		buf = appendWindowKey(buf, name, w.periodEndNs)
		mid := len(buf)
		var err error
		if buf, err = appendWindowValue(buf, w, name.groupKey); err != nil {
			return err
		}
		snap.windowPuts = append(snap.windowPuts, state.KV{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
	}
	clear(s.pending.merges)
	s.pending.merges = s.pending.merges[:0]
	clear(s.pending.dirty)
	s.pending.dirty = s.pending.dirty[:0]
	snap.windowDeletes, s.pending.deleted = s.pending.deleted, nil
	for customer := range s.pending.subsDirty {
		snap.subsPuts = append(snap.subsPuts, state.KV{Key: []byte(customer), Value: encodeChanges(s.subs[customer])})
	}
	clear(s.pending.subsDirty)
	s.snapshotBalances(snap)
	s.snapshotSLA(snap)
	s.snapshotServices(snap)
	snap.dedupAdds = make([]state.DedupEntry, len(s.dedup.added))
	for i, a := range s.dedup.added {
		snap.dedupAdds[i] = state.DedupEntry{BucketNs: a.bucketNs, IDHash: a.id, RoutingHash: a.routingHash}
	}
	s.dedup.added = s.dedup.added[:0]
	snap.deadLetters, s.pending.deadLetters = s.pending.deadLetters, nil
	snap.actions, s.pending.actions = s.pending.actions, nil
	snap.duplicates, s.pending.duplicates = s.pending.duplicates, make(map[string]uint64)
	return nil
}

// reserveRows makes room for n more rows.
func (snap *shardSnapshot) reserveRows(n int) {
	snap.rowBuf = slices.Grow(snap.rowBuf, 160*n)
	snap.rowEnds = slices.Grow(snap.rowEnds, n)
}

// addRow encodes r for the outbox.
func (snap *shardSnapshot) addRow(r *RatedRow) {
	snap.rowBuf = encodeRow(snap.rowBuf, r)
	snap.rowEnds = append(snap.rowEnds, len(snap.rowBuf))
	if r.Final {
		snap.finals++
	}
}

// finishRows slices the encoded rows out of rowBuf, once it no longer
// grows.
func (snap *shardSnapshot) finishRows() {
	snap.encodedRows = make([][]byte, len(snap.rowEnds))
	start := 0
	for i, end := range snap.rowEnds {
		snap.encodedRows[i] = snap.rowBuf[start:end:end]
		start = end
	}
	snap.rowEnds = nil
}
