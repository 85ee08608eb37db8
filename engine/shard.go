package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// Rater prices usage. It must be safe for concurrent use by all shards and
// deterministic, so that replay reproduces the same rows.
type Rater interface {
	// RateEvent decides how one event is priced before it is aggregated
	// (ev.Units is what it adds to its meter): windowStart is the start of
	// its window, whose plan prices it. When the
	// price is per event (connect fees, per-event bounds, time bands,
	// destinations) the rating carries the event's own charge and rate.
	// When the usage cannot be priced, the reason (ReasonNoSubscription,
	// ReasonUnpriced) and why: such records are dead-lettered, never
	// aggregated for free.
	RateEvent(sub Subscriber, meter string, windowStart time.Time, ev *Event) (EventRating, Reason, error)
	// Increment is the charge of moving the billing period's charged-to-date
	// quantity from before to after (rounded cumulative charge after minus
	// before, so that increments add up to the period's charge), under the
	// plan in force at windowStart.
	Increment(sub Subscriber, meter string, windowStart time.Time, before, after decimal.Decimal) (rating.Charge, error)
	// IncrementEvents is Increment for a window of a per-event price:
	// before and after are the period's sums of event charges; usage is the
	// window's, to explain the charge.
	IncrementEvents(sub Subscriber, meter string, windowStart time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error)
	// PeriodFee is what a closed billing period of the meter adds on top of
	// its usage (flat fee, minimum-commitment true-up given the usage
	// charged), prorated over the plans in force during the period; ok is
	// false when they have no period fee for the meter.
	PeriodFee(sub Subscriber, meter string, periodStart, periodEnd time.Time, usageCharged decimal.Decimal) (charge rating.Charge, ok bool, err error)
}

// Subscriber is a customer as a Rater sees it: its id and the subscription
// changes its subscription events made, which apply on top of its
// configured subscriptions (rating.Subscriptions.Timeline).
type Subscriber struct {
	ID      string
	Changes []rating.Change
}

// SubscriptionRules is what the engine needs to apply subscription events
// and to charge period fees of subscribers without usage. A Rater that does
// not implement it has no subscriptions: such events are dead-lettered.
type SubscriptionRules interface {
	// CheckPlan reports whether a subscription event may name plan id.
	CheckPlan(id string) error
	// Subscribers lists the customers with configured subscriptions.
	Subscribers() []string
	// FeeMeters lists the meters whose period fees (flat fee, commitment)
	// sub owes for the billing period, usage or not.
	FeeMeters(sub Subscriber, periodStart, periodEnd time.Time) []string
	// SubscribedFrom is when sub was first on a plan (configured or by its
	// events); ok is false if never.
	SubscribedFrom(sub Subscriber) (at time.Time, ok bool)
}

// EventRating is how a plan prices one event.
type EventRating struct {
	// PerEvent is set when the event is charged on its own: Amount is its
	// unrounded charge, and windows are charged by the sum of theirs.
	PerEvent bool
	Amount   decimal.Decimal
	// Rate names the band or destination rate the event is priced at. It
	// joins the group key as the dimension rate=<name>, so that each row
	// is priced at one rate and its breakdown can say which.
	Rate string
}

// RateDim is the dimension that carries an event's rate in group keys.
const RateDim = "rate"

// PeriodFeeGroup is the group key of period fee rows: a period's flat fee
// and commitment true-up, one row per (meter, customer, period). Real group
// keys always contain '=', so it cannot collide with one.
const PeriodFeeGroup = "@period"

// timeRules are the event-time bounds every shard applies identically.
type timeRules struct {
	graceNs         int64
	reviseHorizonNs int64
	dedupHorizonNs  int64
	// finalizeAfterNs, when > 0, keeps windows revisable until their
	// billing period is finalized (its end + finalizeAfter); reviseHorizon
	// then only bounds how long they stay in memory.
	finalizeAfterNs int64
	// dedupMemoryNs is how far behind the watermark ids stay in memory;
	// older ones are looked up in the store.
	dedupMemoryNs int64
}

// late reports whether a record at tNs, in a window ending at endNs and a
// billing period settling at periodEndNs (see settleEnd), is too late at
// watermark wm: its
// window or period no longer accepts records, or its dedup bucket is
// forgotten, so a duplicate could no longer be recognised. Such records are
// dead-lettered.
func (r timeRules) late(tNs, endNs, periodEndNs, wm int64) bool {
	if wm == minWatermark {
		return false
	}
	if floorDiv(tNs, dedupBucketNs) < r.dedupExpiry(wm) {
		return true
	}
	if r.finalizeAfterNs > 0 {
		return r.finalized(periodEndNs, wm)
	}
	return endNs+r.reviseHorizonNs <= wm || periodEndNs+r.reviseHorizonNs <= wm
}

// finalized reports whether the billing period settling at periodEndNs is final.
func (r timeRules) finalized(periodEndNs, wm int64) bool {
	return wm != minWatermark && periodEndNs+r.finalizeAfterNs <= wm
}

// retentionNs is how long after a billing period settles its windows stay
// in the store: until the period is finalized, or without finalizeAfter for
// reviseHorizon. Past it they may be deleted (one range delete).
func (r timeRules) retentionNs() int64 {
	if r.finalizeAfterNs > 0 {
		return r.finalizeAfterNs
	}
	return r.reviseHorizonNs
}

// hot reports whether something ending at endNs stays in memory at wm.
func (r timeRules) hot(endNs, wm int64) bool {
	return wm == minWatermark || endNs+r.reviseHorizonNs > wm
}

// dedupExpiry is the first dedup bucket still kept at wm; buckets before it
// are forgotten, and records in them are late.
func (r timeRules) dedupExpiry(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return floorDiv(wm-r.dedupHorizonNs, dedupBucketNs)
}

// dedupMemoryExpiry is the first dedup bucket kept in memory; older ones
// are looked up in the store.
func (r timeRules) dedupMemoryExpiry(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return floorDiv(wm-min(r.dedupHorizonNs, r.dedupMemoryNs), dedupBucketNs)
}

// closed reports whether a window ending at endNs is closed at wm.
func (r timeRules) closed(endNs, wm int64) bool {
	return wm != minWatermark && endNs+r.graceNs <= wm
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
	durableSeq  uint64 // the last checkpoint known durable when cut
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
	subsPuts      []state.KV
	dedupAdds     []state.DedupEntry
	rows          []RatedRow
	deadLetters   []DeadLetter
	revenue       map[string]decimal.Decimal // net change by currency
	duplicates    map[string]uint64          // by meter
	liveWindows   int
	dedupIDs      int
	coldReads     uint64
	spilled       uint64
	overBudget    bool
	err           error
}

// shard aggregates the events of the customers hashed to it. All its fields
// are owned by its goroutine (run); it shares nothing, so the per-record path
// takes no lock.
type shard struct {
	index     int
	tenant    string
	rules     timeRules
	meters    *Meters
	customers *customers
	rater     Rater
	in        chan shardMsg
	// eventSlices takes back the event slices of applied messages (nil:
	// they are left to the collector).
	eventSlices *sync.Pool
	windows     map[windowKey]*window
	// byEnd indexes windows by end so that eviction visits only old ends.
	// A window is filed once while it is in memory (every insert follows a
	// failed lookup), so a slice per end serves: 8 bytes a window instead of
	// a map entry with its whole key.
	byEnd map[int64][]*window
	// groups counts the groups of each (meter, customer, window start), for
	// the meters' maxGroupsPerKey.
	groups map[groupFamily]int
	// periods holds the billing-period aggregates, periodsByEnd indexes them.
	periods      map[windowKey]*window
	periodsByEnd map[int64][]*window
	// byCustomer indexes windows and periods for queries. A slice, not a
	// map: a customer has few live windows, and a map per customer would
	// cost several hundred bytes of each key's memory.
	byCustomer map[string][]*window
	dedup      *dedupSet
	queries    chan *usageQuery
	// store holds what left memory; read when a late record needs it.
	store coldStore
	// seq is the last barrier seen; durableSeq the last durable checkpoint.
	seq, durableSeq uint64
	// storeErr is a failed store read, reported at the next barrier.
	storeErr error
	// coldReads counts store reads since the last barrier.
	coldReads uint64
	// maxWindows is the shard's share of the memory budget (0: none);
	// spilled counts windows spilled since the last barrier.
	maxWindows int
	spilled    uint64
	overBudget bool
	// closedEnds marks period ends whose periods had their fees checked at
	// close; feeDue lists closed periods whose charged usage changed since.
	closedEnds map[int64]bool
	feeDue     []*window
	// subs holds the subscription changes of the shard's customers read
	// from subscription events; subsDirty those changed since the last
	// barrier. feeCustomers are the customers with subscriptions (configured
	// or from events), who owe period fees usage or not; feeNew those whose
	// periods are not opened yet, feeNext the others by the start of the
	// next period to open for them.
	subs         map[string][]rating.Change
	subsDirty    map[string]bool
	feeCustomers map[string]bool
	feeNew       []feeStart
	feeNext      map[int64][]string
	// feeFloorNs bounds how far back new subscribers owe period fees (the
	// horizon; minWatermark: none).
	feeFloorNs int64
	// deletedThroughNs is the watermark of the last eviction (at the last
	// barrier, or the recovered one): periods that settled more than their
	// retention before it may be gone from the store (see openFeePeriodAt).
	deletedThroughNs int64

	watermarkNs int64
	dirty       []*window
	unemitted   []*window
	deleted     [][]byte
	deadLetters []DeadLetter
	duplicates  map[string]uint64
}

type groupFamily struct {
	meter, customer string
	startNs         int64
}

// coldStore is what a shard reads back from the state store.
type coldStore interface {
	Window(key []byte) ([]byte, bool, error)
	HasDedup(bucketNs int64, id [16]byte) (bool, error)
}

func newShard(index int, tenant string, rules timeRules, meters *Meters, customers *customers, rater Rater, store coldStore, queueLen int) *shard {
	return &shard{
		store:            store,
		customers:        customers,
		index:            index,
		tenant:           tenant,
		rules:            rules,
		meters:           meters,
		rater:            rater,
		in:               make(chan shardMsg, queueLen),
		windows:          make(map[windowKey]*window),
		byEnd:            make(map[int64][]*window),
		groups:           make(map[groupFamily]int),
		periods:          make(map[windowKey]*window),
		periodsByEnd:     make(map[int64][]*window),
		byCustomer:       make(map[string][]*window),
		closedEnds:       make(map[int64]bool),
		subs:             make(map[string][]rating.Change),
		subsDirty:        make(map[string]bool),
		feeCustomers:     make(map[string]bool),
		feeNext:          make(map[int64][]string),
		feeFloorNs:       minWatermark,
		deletedThroughNs: minWatermark,
		dedup:            newDedupSet(),
		queries:          make(chan *usageQuery, queryQueueLen),
		watermarkNs:      minWatermark,
		duplicates:       make(map[string]uint64),
	}
}

// queryPollEvents is how many events a shard applies between looks at its
// query queue: queries wait at most that long behind a busy batch.
const queryPollEvents = 256

// run processes messages until the input channel is closed. Queries are
// answered between messages and every queryPollEvents events.
func (s *shard) run() {
	for {
		select {
		case q := <-s.queries:
			s.answer(q)
		case msg, ok := <-s.in:
			if !ok {
				return
			}
			if msg.barrier != nil {
				msg.barrier.replies <- s.snapshot(msg.barrier)
				continue
			}
			s.watermarkNs = msg.watermarkNs
			for i := range msg.events {
				if i%queryPollEvents == queryPollEvents-1 {
					s.pollQueries()
				}
				s.apply(&msg.events[i])
			}
			if s.eventSlices != nil {
				// Nothing keeps a pointer into the events once applied.
				clear(msg.events)
				events := msg.events[:0]
				s.eventSlices.Put(&events)
			}
		}
	}
}

func (s *shard) pollQueries() {
	for {
		select {
		case q := <-s.queries:
			s.answer(q)
		default:
			return
		}
	}
}

func (s *shard) deadLetter(ev *Event, reason Reason, detail string) {
	s.deadLetters = append(s.deadLetters, DeadLetter{Reason: reason, Detail: detail,
		Topic: ev.Partition.Topic, Partition: ev.Partition.Partition, Offset: ev.Offset, Raw: ev.Raw})
}

// apply adds one event. Order of checks: a late record is dead-lettered
// before dedup because its dedup bucket may already be forgotten: the dedup
// horizon covers exactly the records that are not late. The cardinality
// check comes after dedup so that a duplicate is never dead-lettered.
func (s *shard) apply(ev *Event) {
	if ev.Subscription {
		s.applySubscription(ev)
		return
	}
	m := ev.meter
	cust := s.customers.get(ev.Customer)
	loc := m.windowLoc(cust)
	startNs := m.window.start(ev.TimeNs, loc)
	endNs := m.window.end(startNs, loc)
	// A window belongs to the billing period its start falls in (a window
	// across a period boundary is billed whole in the first): its period
	// aggregate and charges follow that period, and the period settles only
	// when its last window ends (see settleEnd). settleNs leads the state
	// keys of the window and the period, and bounds their lateness.
	periodStartNs, periodEndNs := billingPeriod(startNs, cust.loc, cust.anchorDay)
	settleNs := m.settleEnd(periodEndNs, loc)
	if s.rules.late(ev.TimeNs, endNs, settleNs, s.watermarkNs) {
		s.deadLetter(ev, ReasonLate, fmt.Sprintf("meter %s window %s no longer accepts records: watermark %s",
			m.Name, time.Unix(0, startNs).UTC().Format(time.RFC3339), time.Unix(0, s.watermarkNs).UTC().Format(time.RFC3339)))
		return
	}
	rated, reason, err := s.rater.RateEvent(s.subscriber(ev.Customer), m.Name, time.Unix(0, startNs).UTC(), ev)
	if err != nil {
		s.deadLetter(ev, reason, fmt.Sprintf("meter %s: %v", m.Name, err))
		return
	}
	key := windowKey{meter: m.Name, customer: ev.Customer, groupKey: ev.GroupKey, startNs: startNs}
	if rated.Rate != "" {
		key.groupKey = groupKey(m, ev.Dims, Dim{Key: RateDim, Value: rated.Rate})
	}
	w := s.windows[key]
	if w == nil && s.rules.closed(endNs, s.watermarkNs) {
		// A closed window may have left memory (past the memory horizon, or
		// spilled over the memory budget) and still be revisable: read it
		// back. Only late records take this path.
		w = s.loadCold(key, settleNs)
	}
	family := groupFamily{meter: m.Name, customer: ev.Customer, startNs: startNs}
	if w == nil && s.groups[family] >= m.MaxGroupsPerKey {
		// Checked before dedup remembers the id, so a retry of this record
		// is dead-lettered again rather than counted as a duplicate.
		s.deadLetter(ev, ReasonCardinality, fmt.Sprintf("meter %s: customer already has %d groups in window %s (maxGroupsPerKey)",
			m.Name, m.MaxGroupsPerKey, time.Unix(0, startNs).UTC().Format(time.RFC3339)))
		return
	}
	if s.duplicate(ev, m) {
		s.duplicates[m.Name]++
		return
	}
	if w == nil {
		w = s.addWindow(key, m, endNs, settleNs)
	}
	w.add(ev)
	if rated.PerEvent {
		w.addMoney(rated.Amount)
	}
	s.touch(w)

	// The window remembers its period aggregate, which saves a map lookup
	// per record; a period that left memory is marked dropped and looked up
	// (or read back) again.
	p := w.period
	if p == nil || p.dropped {
		periodKey := windowKey{meter: m.Name, customer: ev.Customer, startNs: periodStartNs, period: true}
		p = s.periods[periodKey]
		if p == nil && !s.rules.hot(settleNs, s.watermarkNs) {
			p = s.loadCold(periodKey, settleNs)
		}
		if p == nil {
			p = &window{key: periodKey, meter: m, endNs: periodEndNs, periodEndNs: settleNs}
			s.indexPeriod(p)
			// A late record may open a period that has already closed (a
			// customer without usage in it yet): its fee row is due now,
			// since the close already passed it by.
			s.queueFee(p)
		}
		w.period = p
	}
	p.add(ev)
	if rated.PerEvent {
		p.addMoney(rated.Amount)
	}
	s.markDirty(p)
}

// spill keeps the shard within its memory budget: closed windows whose
// final revision is emitted and whose state is durable leave memory, oldest
// first; they stay in the store and are read back if a late record needs
// them. Open windows never spill; overBudget reports when they alone exceed
// the budget.
func (s *shard) spill() {
	if s.maxWindows <= 0 || len(s.windows) <= s.maxWindows {
		s.overBudget = false
		return
	}
	ends := make([]int64, 0, len(s.byEnd))
	for endNs := range s.byEnd {
		if s.rules.closed(endNs, s.watermarkNs) {
			ends = append(ends, endNs)
		}
	}
	slices.Sort(ends)
	for _, endNs := range ends {
		setByEnd(s.byEnd, endNs, slices.DeleteFunc(s.byEnd[endNs], func(w *window) bool {
			if len(s.windows) <= s.maxWindows || w.pendingEmission() || w.dirty || w.writtenSeq > s.durableSeq {
				return false
			}
			delete(s.windows, w.key)
			s.unindexCustomer(w.key)
			s.releaseGroup(w.key)
			s.spilled++
			return true
		}))
	}
	s.overBudget = len(s.windows) > s.maxWindows
}

// duplicate reports whether ev's id was seen for meter m, in memory or, for
// buckets that left memory, in the store; if not, it remembers it.
func (s *shard) duplicate(ev *Event, m *meterSpec) bool {
	return s.seen(ev, eventIDHash(ev.Source, ev.ID, m.Name))
}

// seen reports whether id (of ev's time and customer) was remembered, in
// memory or, for buckets that left memory, in the store; if not, it
// remembers it, to be checkpointed with the next barrier. Usage and
// subscription events share it.
//
// Ids in memory are indexed by id alone, whatever their bucket: a producer
// that re-stamps a retry with another time still sends a duplicate, and it
// is found as long as the original's bucket is in memory (dedupMemoryHorizon
// behind the watermark, or ahead of it). Past that, only the event's own
// bucket is looked up in the store: a lookup by id alone in every stored
// bucket would cost each new record a Pebble read (issue 11, hole 4).
func (s *shard) seen(ev *Event, id idHash) bool {
	bucket := floorDiv(ev.TimeNs, dedupBucketNs)
	fresh := s.rules.dedupMemoryExpiry(s.watermarkNs)
	if bucket >= fresh {
		// The usual case: the bucket is wholly in memory, and the index of
		// every id in memory tells whether the id was there, in any bucket
		// within the memory horizon.
		return !s.dedup.insert(bucket, id, routingHash(ev.Customer), s.seq+1, fresh)
	}
	if s.dedup.contains(id, bucket, fresh) {
		return true
	}
	s.coldReads++
	found, err := s.store.HasDedup(bucket, id)
	if err != nil {
		s.storeErr = err
	}
	if found {
		return true
	}
	s.dedup.insert(bucket, id, routingHash(ev.Customer), s.seq+1, fresh)
	return false
}

// loadCold reads a window or period aggregate back from the store into
// memory; nil if the store does not hold it.
func (s *shard) loadCold(key windowKey, periodEndNs int64) *window {
	s.coldReads++
	v, ok, err := s.store.Window(encodeWindowKey(key, periodEndNs))
	if err != nil {
		s.storeErr = err
		return nil
	}
	if !ok {
		return nil
	}
	w := &window{}
	if err := decodeWindowValue(v, w); err != nil {
		s.storeErr = fmt.Errorf("window %v: %w: state is corrupt", key, err)
		return nil
	}
	w.periodEndNs = periodEndNs
	if err := s.restoreWindow(key, w); err != nil {
		s.storeErr = err
		return nil
	}
	return w
}

// indexPeriod registers period aggregate p, filed for eviction and fees
// under its settle end (periodEndNs, see settleEnd), not the period's end.
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

func (s *shard) indexCustomer(w *window) {
	s.byCustomer[w.key.customer] = append(s.byCustomer[w.key.customer], w)
}

func (s *shard) unindexCustomer(key windowKey) {
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

func (s *shard) addWindow(key windowKey, m *meterSpec, endNs, periodEndNs int64) *window {
	w := &window{key: key, meter: m, endNs: endNs, periodEndNs: periodEndNs}
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
	if !w.dirty {
		w.dirty = true
		s.dirty = append(s.dirty, w)
	}
}

// touch marks w as changed since both its last checkpoint and its last emission.
func (s *shard) touch(w *window) {
	s.markDirty(w)
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
	s.seq, s.durableSeq = b.seq, b.durableSeq
	snap := &shardSnapshot{shard: s.index, revenue: make(map[string]decimal.Decimal)}
	if s.storeErr != nil {
		snap.err = fmt.Errorf("engine: read state store: %w", s.storeErr)
		return snap
	}

	// 1. Emit: closed windows with changes or whose last revision was
	// provisional, and open windows with changes when asked to. Invariant: a
	// window is in the unemitted list iff pendingEmission().
	// Only the windows due now are ordered: emission order decides which
	// window an increment of a tiered charge falls to, so it must be
	// deterministic, but sorting every open window at every barrier would
	// cost more than the records.
	kept := s.unemitted[:0]
	var due []*window
	for _, w := range s.unemitted {
		if s.rules.closed(w.endNs, b.watermarkNs) || (b.emitOpen && w.changed) {
			due = append(due, w)
		} else {
			kept = append(kept, w)
		}
	}
	slices.SortFunc(due, func(a, b *window) int {
		switch {
		case a.key.startNs != b.key.startNs:
			return cmp.Compare(a.key.startNs, b.key.startNs)
		case a.key.meter != b.key.meter:
			return strings.Compare(a.key.meter, b.key.meter)
		case a.key.customer != b.key.customer:
			return strings.Compare(a.key.customer, b.key.customer)
		default:
			return strings.Compare(a.key.groupKey, b.key.groupKey)
		}
	})
	snap.rows = make([]RatedRow, 0, len(due))
	for _, w := range due {
		final := s.rules.closed(w.endNs, b.watermarkNs)
		row, err := s.emit(w, final)
		if err != nil {
			snap.err = err
			return snap
		}
		snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(w.emittedAmount))
		w.emittedAmount = row.Amount
		snap.rows = append(snap.rows, row)
		if final {
			w.queued = false
		} else {
			kept = append(kept, w) // its final revision is still due
		}
		s.markDirty(w)
	}
	clear(s.unemitted[len(kept):])
	s.unemitted = kept

	// 1a. Subscribers owe their period fees usage or not: make sure each
	// has its current period's aggregates.
	s.openFeePeriods()

	// 1b. Period fees: when a period closes (after its windows, emitted
	// above), and again when late usage changed what it charged.
	fees := s.feeDue
	s.feeDue = nil
	for endNs, ps := range s.periodsByEnd {
		if s.closedEnds[endNs] || !s.rules.closed(endNs, b.watermarkNs) {
			continue
		}
		s.closedEnds[endNs] = true
		fees = append(fees, ps...)
	}
	slices.SortFunc(fees, func(a, b *window) int {
		if c := strings.Compare(a.key.customer, b.key.customer); c != 0 {
			return c
		}
		if c := strings.Compare(a.key.meter, b.key.meter); c != 0 {
			return c
		}
		return cmp.Compare(a.key.startNs, b.key.startNs)
	})
	for _, p := range fees {
		p.feeQueued = false
		row, ok, err := s.emitPeriodFee(p)
		if err != nil {
			snap.err = err
			return snap
		}
		if ok {
			snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(p.emittedAmount))
			p.emittedAmount = row.Amount
			snap.rows = append(snap.rows, row)
			s.markDirty(p)
		}
	}

	// 2. Windows and periods past the memory horizon leave memory. Without
	// finalizeAfter no record may revise them any more, so they are deleted
	// from the store too (they were emitted in step 1 at the latest, since
	// reviseHorizon >= grace). With it they stay in the store, revisable
	// until their period is finalized, and leave memory only once their
	// latest state is durable, so that a read-back never sees an older one.
	finalizing := s.rules.finalizeAfterNs > 0
	evict := func(byEnd map[int64][]*window, drop func(*window)) error {
		var err error
		for endNs, ws := range byEnd {
			if s.rules.hot(endNs, b.watermarkNs) {
				continue
			}
			setByEnd(byEnd, endNs, slices.DeleteFunc(ws, func(w *window) bool {
				if err != nil {
					return false
				}
				if !w.key.period && w.pendingEmission() {
					err = fmt.Errorf("engine: invariant broken: evicting window %v before its final revision", w.key)
					return false
				}
				if finalizing && (w.dirty || w.writtenSeq > s.durableSeq) {
					return false // not durable yet; a later barrier evicts it
				}
				drop(w)
				s.unindexCustomer(w.key)
				if !finalizing {
					w.dirty = false // dropped from the dirty list below
					s.deleted = append(s.deleted, encodeWindowKey(w.key, w.periodEndNs))
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
	if err != nil {
		snap.err = err
		return snap
	}
	s.deletedThroughNs = b.watermarkNs
	s.dedup.expire(s.rules.dedupMemoryExpiry(b.watermarkNs), s.durableSeq)
	s.spill()

	// 3. Encode what changed.
	// Keys and values go into one buffer (Pebble copies them into its
	// batch): two allocations per snapshot instead of two per window.
	snap.windowPuts = make([]state.KV, 0, len(s.dirty))
	buf := make([]byte, 0, 160*len(s.dirty))
	for _, w := range s.dirty {
		if !w.dirty {
			continue // evicted
		}
		start := len(buf)
		buf = appendWindowKey(buf, w.key, w.periodEndNs)
		mid := len(buf)
		var err error
		if buf, err = appendWindowValue(buf, w); err != nil {
			snap.err = err
			return snap
		}
		snap.windowPuts = append(snap.windowPuts, state.KV{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]})
		w.dirty = false
		w.writtenSeq = b.seq
	}
	clear(s.dirty)
	s.dirty = s.dirty[:0]
	snap.windowDeletes, s.deleted = s.deleted, nil
	for customer := range s.subsDirty {
		snap.subsPuts = append(snap.subsPuts, state.KV{Key: []byte(customer), Value: encodeChanges(s.subs[customer])})
	}
	clear(s.subsDirty)
	snap.dedupAdds = make([]state.DedupEntry, len(s.dedup.added))
	for i, a := range s.dedup.added {
		snap.dedupAdds[i] = state.DedupEntry{BucketNs: a.bucketNs, IDHash: a.id, RoutingHash: a.routingHash}
	}
	s.dedup.added = s.dedup.added[:0]
	snap.deadLetters, s.deadLetters = s.deadLetters, nil
	snap.duplicates, s.duplicates = s.duplicates, make(map[string]uint64)
	snap.coldReads, s.coldReads = s.coldReads, 0
	snap.spilled, s.spilled = s.spilled, 0
	snap.overBudget = s.overBudget
	snap.liveWindows = len(s.windows)
	snap.dedupIDs = s.dedup.size()
	return snap
}

// emitPeriodFee returns the next revision of period p's fee row, if its plan
// has a fee for the meter and the amount differs from the last one emitted.
func (s *shard) emitPeriodFee(p *window) (RatedRow, bool, error) {
	start := time.Unix(0, p.key.startNs).UTC()
	charge, ok, err := s.rater.PeriodFee(s.subscriber(p.key.customer), p.key.meter, start, time.Unix(0, p.endNs).UTC(), p.chargedAmount)
	if err != nil {
		return RatedRow{}, false, fmt.Errorf("engine: period fee of %s/%s/%s: %w", p.key.meter, p.key.customer, start.Format(time.RFC3339), err)
	}
	if !ok || (p.revision > 0 && charge.Amount.Equal(p.emittedAmount)) {
		return RatedRow{}, false, nil
	}
	p.revision++
	p.emittedFinal = true
	return RatedRow{
		Tenant: s.tenant, Meter: p.key.meter, Customer: p.key.customer, GroupKey: PeriodFeeGroup,
		WindowStart: start, WindowEnd: time.Unix(0, p.endNs).UTC(),
		Quantity: p.quantity(), Count: p.count, Amount: charge.Amount, Currency: charge.Currency,
		Revision: p.revision, Final: true, Breakdown: charge.Lines,
	}, true, nil
}

// emit rates w and returns its next revision. Invariant: revisions of a
// window only grow, and each carries the window's full totals.
//
// A SUM or COUNT window is charged incrementally against its billing
// period: the quantity it gained since its last revision moves the period's
// charged-to-date quantity, and the window's amount grows by the charge of
// that move. So allowances and tiers apply to the period, and the amounts of
// a period's windows always add up to the charge of the period's total.
// Other aggregations do not add up over a period; each window is priced on
// its own.
func (s *shard) emit(w *window, final bool) (RatedRow, error) {
	start := time.Unix(0, w.key.startNs).UTC()
	quantity := w.quantity()
	cust := s.customers.get(w.key.customer)
	periodStartNs, _ := billingPeriod(w.key.startNs, cust.loc, cust.anchorDay)
	pkey := windowKey{meter: w.key.meter, customer: w.key.customer, startNs: periodStartNs, period: true}
	p := s.periods[pkey]
	if p == nil {
		p = s.loadCold(pkey, w.periodEndNs)
	}
	if p == nil {
		return RatedRow{}, fmt.Errorf("engine: invariant broken: window %v has no billing-period aggregate to charge against", w.key)
	}
	var amount decimal.Decimal
	var charge rating.Charge
	var err error
	switch {
	case w.perEvent:
		// The window's events were priced one by one: the period's sum of
		// event charges moves by what the window gained since its last
		// revision.
		before := p.emittedMoney
		after := before.Add(w.money.Sub(w.emittedMoney))
		usage := rating.WindowUsage{Rate: groupDim(w.key.groupKey, RateDim), Units: quantity, Events: w.count, Amount: w.money}
		if charge, err = s.rater.IncrementEvents(s.subscriber(w.key.customer), w.key.meter, start, usage, before, after); err == nil {
			amount = w.emittedAmount.Add(charge.Amount)
			p.emittedMoney = after
			w.emittedMoney = w.money
			// The period moved even when the window's charge is 0 (inside
			// an allowance, a zero-price tier, a package block already
			// paid, an amount rounding to 0): the move must be
			// checkpointed, or a restart charges it again.
			s.markDirty(p)
		}
	case w.meter.additive():
		before := p.emittedQuantity
		after := before.Add(quantity.Sub(w.emittedQuantity))
		if charge, err = s.rater.Increment(s.subscriber(w.key.customer), w.key.meter, start, before, after); err == nil {
			amount = w.emittedAmount.Add(charge.Amount)
			p.emittedQuantity = after
			s.markDirty(p) // as above: even a zero charge moves the period
		}
	default:
		if charge, err = s.rater.Increment(s.subscriber(w.key.customer), w.key.meter, start, decimal.Zero, quantity); err == nil {
			amount = charge.Amount
		}
	}
	if err == nil && !amount.Equal(w.emittedAmount) {
		p.chargedAmount = p.chargedAmount.Add(amount.Sub(w.emittedAmount))
		s.queueFee(p) // its true-up may change
	}
	if err != nil {
		return RatedRow{}, fmt.Errorf("engine: rate window %s/%s/%s: %w", w.key.meter, w.key.customer, start.Format(time.RFC3339), err)
	}
	w.revision++
	w.changed, w.emittedFinal = false, final
	w.emittedQuantity = quantity
	return RatedRow{
		Tenant:      s.tenant,
		Meter:       w.key.meter,
		Customer:    w.key.customer,
		GroupKey:    w.key.groupKey,
		WindowStart: start,
		WindowEnd:   time.Unix(0, w.endNs).UTC(),
		Quantity:    quantity,
		Count:       w.count,
		Amount:      amount,
		Currency:    charge.Currency,
		UnitPrice:   charge.UnitPrice,
		Revision:    w.revision,
		Final:       final,
		Breakdown:   charge.Lines,
	}, nil
}

// restoreWindow installs a window loaded from the store before run starts.
func (s *shard) restoreWindow(key windowKey, w *window) error {
	m := s.meters.byName(key.meter)
	if m == nil {
		return fmt.Errorf("state holds meter %q, which is no longer configured; configure it again (its windows are not billed yet)", key.meter)
	}
	w.key, w.meter = key, m
	if key.period {
		s.indexPeriod(w)
		return nil
	}
	s.indexWindow(w)
	if w.pendingEmission() {
		w.queued = true
		s.unemitted = append(s.unemitted, w)
	}
	return nil
}
