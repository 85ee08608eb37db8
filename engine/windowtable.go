package engine

import (
	"fmt"
	"maps"
	"slices"
)

// spill keeps the shard within its memory budget: closed windows whose
// final revision is emitted leave memory, oldest first, once their state is
// merged into their own keys (the first barrier merges, a later one after it
// is durable evicts); they are read back if a late record needs them. Open
// windows never spill; overBudget reports when they alone exceed the budget.
func (s *shard) spill() {
	if s.maxWindows <= 0 || len(s.windows) <= s.maxWindows {
		s.overBudget = false
		return
	}
	excess := len(s.windows) - s.maxWindows
	ends := make([]int64, 0, len(s.byEnd))
	for endNs := range s.byEnd {
		if s.rules.closed(endNs, s.watermarkNs) {
			ends = append(ends, endNs)
		}
	}
	slices.Sort(ends)
	for _, endNs := range ends {
		setByEnd(s.byEnd, endNs, slices.DeleteFunc(s.byEnd[endNs], func(w *window) bool {
			if excess <= 0 || w.pendingEmission() || !s.merged(w) {
				return false
			}
			excess--
			delete(s.windows, w.key)
			s.unindexCustomer(w)
			s.releaseGroup(w.key)
			s.leave(w)
			s.pending.spilled++
			return true
		}))
	}
	s.overBudget = len(s.windows) > s.maxWindows
}

// loadCold reads a window or period aggregate back from the store into
// memory; nil if the store does not hold it.
func (s *shard) loadCold(key windowKey, periodEndNs int64) *window {
	s.pending.coldReads++
	name := s.name(key)
	v, ok, err := s.store.Window(encodeWindowKey(name, periodEndNs))
	if err != nil {
		s.pending.storeErr = err
		return nil
	}
	if !ok {
		return nil
	}
	w := &window{mergedSeq: s.durableSeq} // its own key holds it
	rate, err := decodeWindowValue(v, name, w)
	if err != nil {
		s.pending.storeErr = fmt.Errorf("window %v: %w: state is corrupt", name, err)
		return nil
	}
	w.periodEndNs = periodEndNs
	w.key = key
	w.rate = s.names.id(rate)
	s.install(w)
	return w
}

// meter returns the meter of w.
func (s *shard) meter(w *window) *meterSpec { return s.meters.list[w.key.meter] }

// name spells key out.
func (s *shard) name(key windowKey) windowName {
	return windowName{meter: s.meters.list[key.meter].Name, customer: s.names.str(key.customer),
		groupKey: s.names.str(key.group), startNs: key.startNs, period: key.period}
}

// indexPeriod registers period aggregate p, filed for eviction and fees
// under its settle end (periodEndNs, see settleEnd), not the period's end.
// Invariant: a period leaves s.periods only by eviction, which marks it
// dropped, so a window's link to it (w.period, used by apply and emit) is
// trusted while it is not dropped.
func (s *shard) indexPeriod(p *window) {
	s.periods[p.key] = p
	addByEnd(s.periodsByEnd, p.periodEndNs, p)
	s.indexCustomer(p)
}

// addByEnd files w under endNs in an eviction index.
func addByEnd(index map[int64][]*window, endNs int64, w *window) {
	index[endNs] = append(index[endNs], w)
}

// setByEnd stores the windows left under an end of an eviction index (what
// slices.DeleteFunc returned), forgetting the end when none is left.
func setByEnd(index map[int64][]*window, endNs int64, ws []*window) {
	if len(ws) == 0 {
		delete(index, endNs)
	} else {
		index[endNs] = ws
	}
}

// releaseGroup forgets one group of key's (meter, customer, window start).
func (s *shard) releaseGroup(key windowKey) {
	family := groupFamily{meter: key.meter, customer: key.customer, startNs: key.startNs}
	if s.groups[family]--; s.groups[family] <= 0 {
		delete(s.groups, family)
	}
}

// indexCustomer files w under its customer. Invariant: every window and
// period in the window table is filed there, and holds its names (customer,
// group key, rate) while it is (see names).
func (s *shard) indexCustomer(w *window) {
	s.byCustomer[w.key.customer] = append(s.byCustomer[w.key.customer], w)
	s.names.hold(w.key.customer)
	s.names.hold(w.key.group)
	s.names.hold(w.rate)
}

// unindexCustomer takes w out of its customer's list, as it leaves the
// window table.
func (s *shard) unindexCustomer(w *window) {
	key := w.key
	s.names.release(key.customer)
	s.names.release(key.group)
	s.names.release(w.rate)
	c := s.byCustomer[key.customer]
	for i, w := range c {
		if w.key == key {
			c[i] = c[len(c)-1]
			c[len(c)-1] = nil
			c = c[:len(c)-1]
			break
		}
	}
	if len(c) == 0 {
		delete(s.byCustomer, key.customer)
	} else {
		s.byCustomer[key.customer] = c
	}
}

// addWindow opens the window of key; rate is the id of its per-event
// price's rate (0: none).
func (s *shard) addWindow(key windowKey, endNs, periodEndNs int64, rate uint32) *window {
	w := &window{key: key, endNs: endNs, periodEndNs: periodEndNs, rate: rate}
	s.indexWindow(w)
	return w
}

// indexWindow registers w in the shard's maps.
func (s *shard) indexWindow(w *window) {
	s.windows[w.key] = w
	addByEnd(s.byEnd, w.endNs, w)
	s.groups[groupFamily{meter: w.key.meter, customer: w.key.customer, startNs: w.key.startNs}]++
	s.indexCustomer(w)
}

// markDirty queues w for the next checkpoint. Invariant: every change to
// a window's or period's durable fields (see appendWindowValue) is followed
// by markDirty before the next barrier, or a restart loses it.
func (s *shard) markDirty(w *window) {
	w.mergedSeq = 0
	if !w.dirty {
		w.dirty = true
		s.pending.dirty = append(s.pending.dirty, w)
	}
}

// touch marks w as changed since both its last checkpoint and its last emission.
func (s *shard) touch(w *window) {
	s.markDirty(w)
	w.changed = true
	if !w.queued {
		s.queueEmission(w)
	}
}

// queueEmission files w as having a revision due.
func (s *shard) queueEmission(w *window) {
	w.queued = true
	s.unemitted[w.endNs] = append(s.unemitted[w.endNs], w)
}

// restoreWindow installs a window loaded from the store before run starts.
func (s *shard) restoreWindow(name windowName, w *window, rate string) error {
	m := s.meters.byName(name.meter)
	if m == nil {
		return fmt.Errorf("state holds meter %q, which is no longer configured; configure it again (its windows are not billed yet)", name.meter)
	}
	w.key = windowKey{meter: uint32(m.index), customer: s.names.id(name.customer), group: s.names.id(name.groupKey),
		startNs: name.startNs, period: name.period}
	w.rate = s.names.id(rate)
	s.install(w)
	return nil
}

// reserve makes room in the window table for windows and periods more
// windows and periods, and for their names, so that installing them does
// not grow its maps again and again: a map's growth rehashes all it holds,
// which was a third of a 1M-window recovery's CPU (BenchmarkRecover).
func (s *shard) reserve(windows, periods int) {
	s.windows = grown(s.windows, windows)
	s.periods = grown(s.periods, periods)
	// A customer has a period per meter it used: at least periods/meters
	// customers. Maps never shrink, so reserve no more than that.
	customers := periods / max(1, len(s.meters.list))
	s.byCustomer = grown(s.byCustomer, customers)
	s.names.reserve(customers)
}

// grown returns m, or a copy of it with room for more entries.
func grown[K comparable, V any](m map[K]V, more int) map[K]V {
	if more <= 0 {
		return m
	}
	g := make(map[K]V, len(m)+more)
	maps.Copy(g, m)
	return g
}

// install files w, read back from the store, in the window table.
func (s *shard) install(w *window) {
	if w.key.period {
		s.indexPeriod(w)
		return
	}
	s.indexWindow(w)
	if w.pendingEmission() {
		s.queueEmission(w)
	}
}

// merged reports whether w's current state is durable in its own state key,
// so that it may leave memory. If it is not there yet (and is not about to
// change: not dirty), the current barrier's checkpoint merges it; a later
// barrier finds it durable.
func (s *shard) merged(w *window) bool {
	switch {
	case w.dirty:
		return false
	case w.mergedSeq == 0:
		w.mergedSeq = s.seq
		s.pending.merges = append(s.pending.merges, w)
		return false
	default:
		return w.mergedSeq <= s.durableSeq
	}
}

// leave records that w left memory, so that recovery does not bring back
// an older state of it from the delta log (a tombstone there): its own key
// holds it (merged) or nothing (deleted). It returns w's state key.
func (s *shard) leave(w *window) []byte {
	key := encodeWindowKey(s.name(w.key), w.periodEndNs)
	s.pending.left = append(s.pending.left, key)
	return key
}
