package engine

import (
	"fmt"
	"time"

	"github.com/tally-billing/tally/rating"
)

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
	// store holds what left memory; read when a late record needs it.
	store coldStore

	in      chan shardMsg
	queries chan func(*shard)

	// The window table (windowtable.go). names numbers the customers and
	// group keys its keys name.
	names   *names
	windows map[windowKey]*window
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
	byCustomer map[uint32][]*window
	// maxWindows is the shard's share of the memory budget (0: none).
	maxWindows int
	overBudget bool
	// watchLimits is set when crossings of entitlement thresholds are
	// announced (some plan sets an entitlement and an ActionSink takes
	// the actions; see checkLimits).
	watchLimits bool
	// announceLifecycle is set when subscription events announce
	// lifecycle actions (an ActionSink takes them; lifecycleAction).
	announceLifecycle bool
	// resumeDue are closed periods a late record blocked (checkLimits);
	// chargeFees resumes them.
	resumeDue []*window
	// balances are the customers' prepaid grants by balanceKey, and
	// grantTimes when their grants expire or start (grant.go); drawsGrants is set when
	// some plan limits a meter by grants.
	balances    map[string]*balance
	grantTimes  grantTimes
	drawsGrants bool
	// SLA measurements by customer and billing period (sla.go):
	// slaByCustomer lists each customer's and slaBySettle each settle
	// time's; slaClosedSettles marks the settle times seen closed in this
	// run; slaDue holds the periods whose credits the next barrier
	// recomputes, slaPending the closed ones with an unresolved issue, and
	// slaLastWm the watermark of the last barrier (an issue falls due
	// once); slaOngoing marks customers with an outage not over. measuresSLA
	// is set when some plan sets objectives.
	slaPeriods       map[slaKey]*slaPeriod
	slaByCustomer    map[string][]*slaPeriod
	slaBySettle      map[int64][]*slaPeriod
	slaClosedSettles map[int64]bool
	slaDue           map[slaKey]*slaPeriod
	slaPending       map[slaKey]*slaPeriod
	slaLastWm        int64
	slaOngoing       map[string]bool
	slaExtendedWm    int64 // watermark of the last barrier's extendOutages (recovery: the stored one)
	measuresSLA      bool
	// slaServices are the shared services' probes and outages, the same
	// in every shard (slaservice.go); slaServiceTouched their spans
	// changed since the last barrier; slaServiceEvictDay the watermark's
	// day their data was last evicted at.
	slaServices        map[string]*slaService
	slaServiceTouched  map[string]serviceTouch
	slaServiceEvictDay int64
	// actionQueued asks the dispatcher for an early checkpoint when an
	// action is queued (queueAction); nil in tests without a dispatcher.
	actionQueued chan<- struct{}
	inBarrier    bool
	// unemitted lists the windows with a revision due by their end (see
	// emitDue), so that a barrier visits the ends that closed, not every
	// open window.
	unemitted map[int64][]*window

	dedup *dedupSet

	// Period fees and subscriptions (subscription.go). closedEnds marks
	// period ends whose periods had their fees checked at close; feeDue
	// lists closed periods whose charged usage changed since. subs holds
	// the subscription changes of the shard's customers read from
	// subscription events. feeCustomers are the customers with
	// subscriptions (configured or from events), who owe period fees usage
	// or not; feeNew those whose periods are not opened yet, feeNext the
	// others by the start of the next period to open for them.
	closedEnds   map[int64]bool
	feeDue       []*window
	subs         map[string][]rating.Change
	feeCustomers map[string]bool
	feeNew       []feeStart
	feeNext      map[int64][]string
	// feeFloorNs bounds how far back new subscribers owe period fees (the
	// horizon; minWatermark: none).
	feeFloorNs int64

	// Time. watermarkNs is the watermark the dispatcher sent with the
	// current batch; seq is the last barrier seen, durableSeq the last
	// durable checkpoint. deletedThroughNs is the watermark of the last
	// eviction (at the last barrier, or the recovered one): periods that
	// settled more than their retention before it may be gone from the
	// store (see openFeePeriodAt).
	watermarkNs      int64
	seq, durableSeq  uint64
	deletedThroughNs int64

	// deltaScratch keeps encodeDelta's buffers from one barrier to the next.
	deltaScratch deltaWriter

	// pending is what changed since the last barrier; the next snapshot
	// hands it out and starts it afresh.
	pending sinceBarrier
}

// sinceBarrier is what a shard gathers between two barriers.
type sinceBarrier struct {
	// dirty lists the windows and periods whose state differs from their
	// last checkpoint (see markDirty); deleted the state keys to delete.
	dirty   []*window
	deleted [][]byte
	// merges lists windows to write to their own state keys, as they leave
	// memory (see merged); left the state keys of those that left.
	merges []*window
	left   [][]byte
	// subsDirty marks customers whose subscription changes changed.
	subsDirty map[string]bool
	// balancesDirty marks grant balances that changed (by balanceKey).
	balancesDirty map[string]bool
	// slaDirty marks SLA periods that changed.
	slaDirty map[slaKey]bool
	// serviceDirty marks the stored keys of services that changed
	// (serviceStoreKey; shard 0 only).
	serviceDirty map[string]bool
	deadLetters  []DeadLetter
	// actions are the provisioning actions announced (checkLimits).
	actions    []ProvisioningAction
	duplicates map[string]uint64 // by meter
	// coldReads counts store reads, spilled windows spilled over the
	// memory budget.
	coldReads, spilled uint64
	// storeErr is a failed store read, reported at the barrier.
	storeErr error
}

type groupFamily struct {
	meter, customer uint32
	startNs         int64
}

// coldStore is what a shard reads back from the state store.
type coldStore interface {
	Window(key []byte) ([]byte, bool, error)
	HasDedup(bucketNs int64, id [16]byte) (bool, error)
}

func newShard(index int, tenant string, rules timeRules, meters *Meters, customers *customers, rater Rater, store coldStore, queueLen int) *shard {
	return &shard{
		store:             store,
		customers:         customers,
		index:             index,
		tenant:            tenant,
		rules:             rules,
		meters:            meters,
		rater:             rater,
		in:                make(chan shardMsg, queueLen),
		names:             newNames(),
		windows:           make(map[windowKey]*window),
		byEnd:             make(map[int64][]*window),
		groups:            make(map[groupFamily]int),
		periods:           make(map[windowKey]*window),
		periodsByEnd:      make(map[int64][]*window),
		byCustomer:        make(map[uint32][]*window),
		unemitted:         make(map[int64][]*window),
		closedEnds:        make(map[int64]bool),
		subs:              make(map[string][]rating.Change),
		feeCustomers:      make(map[string]bool),
		feeNext:           make(map[int64][]string),
		feeFloorNs:        minWatermark,
		deletedThroughNs:  minWatermark,
		dedup:             newDedupSet(),
		queries:           make(chan func(*shard), queryQueueLen),
		watermarkNs:       minWatermark,
		pending:           sinceBarrier{subsDirty: make(map[string]bool), balancesDirty: make(map[string]bool), slaDirty: make(map[slaKey]bool), serviceDirty: make(map[string]bool), duplicates: make(map[string]uint64)},
		balances:          make(map[string]*balance),
		slaPeriods:        make(map[slaKey]*slaPeriod),
		slaByCustomer:     make(map[string][]*slaPeriod),
		slaOngoing:        make(map[string]bool),
		slaBySettle:       make(map[int64][]*slaPeriod),
		slaClosedSettles:  make(map[int64]bool),
		slaDue:            make(map[slaKey]*slaPeriod),
		slaPending:        make(map[slaKey]*slaPeriod),
		slaLastWm:         minWatermark,
		slaExtendedWm:     minWatermark,
		slaServices:       make(map[string]*slaService),
		slaServiceTouched: make(map[string]serviceTouch),
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
			q(s)
		case msg, ok := <-s.in:
			if !ok {
				return
			}
			if msg.barrier != nil {
				// Actions queued during the barrier are in its checkpoint:
				// they ask for no early one (queueAction).
				s.inBarrier = true
				snap := s.snapshot(msg.barrier)
				s.inBarrier = false
				msg.barrier.replies <- snap
				continue
			}
			s.watermarkNs = msg.watermarkNs
			events := msg.batch.events
			for n, i := range msg.idx {
				if n%queryPollEvents == queryPollEvents-1 {
					s.pollQueries()
				}
				s.apply(&events[i])
			}
			msg.batch.done()
		}
	}
}

func (s *shard) pollQueries() {
	for {
		select {
		case q := <-s.queries:
			q(s)
		default:
			return
		}
	}
}

func (s *shard) deadLetter(ev *Event, reason Reason, detail string) {
	s.pending.deadLetters = append(s.pending.deadLetters, DeadLetter{Reason: reason, Detail: detail,
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
	if ev.Grant != nil {
		s.applyGrant(ev)
		return
	}
	if ev.SLA != nil {
		s.applySLA(ev)
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
	rated, err := s.rater.RateEvent(s.subscriber(ev.Customer), m.Name, time.Unix(0, startNs).UTC(), ev)
	if err != nil {
		s.deadLetter(ev, rateReason(err), fmt.Sprintf("meter %s: %v", m.Name, err))
		return
	}
	group := ev.GroupKey
	if rated.Rate != "" {
		group = groupKey(m, ev.Dims, Dim{Key: RateDim, Value: rated.Rate})
	}
	customer := s.names.id(ev.Customer)
	key := windowKey{meter: uint32(m.index), customer: customer, group: s.names.id(group), startNs: startNs}
	w := s.windows[key]
	if w == nil && s.rules.closed(endNs, s.watermarkNs) {
		// A closed window may have left memory (past the memory horizon, or
		// spilled over the memory budget) and still be revisable: read it
		// back. Only late records take this path.
		w = s.loadCold(key, settleNs)
	}
	family := groupFamily{meter: key.meter, customer: customer, startNs: startNs}
	if w == nil && s.groups[family] >= m.MaxGroupsPerKey {
		// Checked before dedup remembers the id, so a retry of this record
		// is dead-lettered again rather than counted as a duplicate.
		s.deadLetter(ev, ReasonCardinality, fmt.Sprintf("meter %s: customer already has %d groups in window %s (maxGroupsPerKey)",
			m.Name, m.MaxGroupsPerKey, time.Unix(0, startNs).UTC().Format(time.RFC3339)))
		return
	}
	if s.duplicate(ev, m) {
		s.pending.duplicates[m.Name]++
		return
	}
	if w == nil {
		var rate uint32
		if rated.Rate != "" {
			rate = s.names.id(rated.Rate)
		}
		w = s.addWindow(key, endNs, settleNs, rate)
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
		periodKey := windowKey{meter: key.meter, customer: customer, startNs: periodStartNs, period: true}
		p = s.periods[periodKey]
		if p == nil && !s.rules.hot(settleNs, s.watermarkNs) {
			p = s.loadCold(periodKey, settleNs)
		}
		if p == nil {
			p = &window{key: periodKey, endNs: periodEndNs, periodEndNs: settleNs}
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
	if s.watchLimits {
		s.checkLimits(p, m, ev.Customer, startNs, ev.TimeNs, false)
	}
	if s.drawsGrants {
		s.drawGrants(ev, m, startNs)
	}
}
