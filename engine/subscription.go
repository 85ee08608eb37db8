package engine

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/tally-billing/tally/rating"
)

// Subscription events are routed like usage, by customer, so a customer's
// subscription changes and usage reach its shard in the order of their
// partition: publish them to the usage topic keyed by customer and a usage
// record is always priced knowing every change published before it. The
// shard keeps each customer's changes and checkpoints them with the rest of
// its state, so a replay after a crash sees the same history.

// subscriptionMeter stands for a meter name in the dedup identity of
// subscription events.
const subscriptionMeter = "@subscription"

// subscriber returns customer with its subscription changes.
func (s *shard) subscriber(customer string) rating.Subscriber {
	return rating.Subscriber{ID: customer, Changes: s.subs[customer]}
}

// applySubscription records a subscription event: from its time on, its
// customer is on its plan (or none). Changes apply to windows priced after
// them, that is windows starting at or after the change that are emitted,
// or revised, later; rows already emitted keep their price.
func (s *shard) applySubscription(ev *Event) {
	rules, ok := s.rater.(SubscriptionRules)
	if !ok {
		s.deadLetter(ev, ReasonInvalidField, "this engine has no plan catalog to subscribe customers to")
		return
	}
	if ev.Plan != "" {
		if err := rules.CheckPlan(ev.Plan); err != nil {
			s.deadLetter(ev, ReasonInvalidField, fmt.Sprintf("%s: %v", ev.Meter, err))
			return
		}
		if detail := s.mixesCurrencies(rules, ev); detail != "" {
			s.deadLetter(ev, ReasonInvalidField, detail)
			return
		}
	}
	// Remembered and checkpointed like usage ids, and looked up in the
	// store once their bucket left memory: a retry of an old event is a
	// duplicate, not a second change.
	identity := eventIDHash(ev.Source, ev.ID, subscriptionMeter)
	if s.seen(ev, identity) {
		s.pending.duplicates[subscriptionMeter]++
		return
	}
	change := rating.Change{At: time.Unix(0, ev.TimeNs).UTC(), Plan: ev.Plan}
	list := s.subs[ev.Customer]
	// After every change at the same time or earlier: a later event wins.
	i := sort.Search(len(list), func(i int) bool { return list[i].At.After(change.At) })
	list = append(list, rating.Change{})
	copy(list[i+1:], list[i:])
	list[i] = change
	s.subs[ev.Customer] = list
	s.pending.subsDirty[ev.Customer] = true
	if s.announceLifecycle {
		s.lifecycleAction(ev, identity)
	}
	if s.drawsGrants {
		s.settleGrantsOnPlanChange(ev.Customer, ev.TimeNs)
	}
	if s.measuresSLA {
		s.creditsOnPlanChange(ev.Customer, ev.TimeNs)
	}
	s.addFeeCustomer(ev.Customer)
	// The change may prorate fees of periods it falls in or precedes: open
	// its period and every later one up to the watermark's (their fee
	// meters may be new: the new plan's), and recompute the fees of closed
	// periods after it.
	s.openFeePeriodsFrom(ev.Customer, ev.TimeNs)
	if id, ok := s.names.find(ev.Customer); ok {
		for _, w := range s.byCustomer[id] {
			if w.key.period && w.endNs > ev.TimeNs {
				s.queueFee(w)
			}
			// The new plan's thresholds may already be reached by the
			// period the change falls in: announce them now, not with the
			// next record (a client that obeys the live check may send
			// none).
			if s.watchLimits && w.key.period && w.key.startNs <= ev.TimeNs && ev.TimeNs < w.endNs {
				s.checkLimits(w, s.meter(w), ev.Customer, ev.TimeNs, ev.TimeNs, false)
				s.checkLimits(w, s.meter(w), ev.Customer, ev.TimeNs, ev.TimeNs, true)
			}
		}
	}
}

// mixesCurrencies says why subscription event ev would put two currencies
// in one billing period ("" when it would not): the plans in force in the
// event's period after it (later changes already recorded included), or
// rows the period already emitted in another currency (they keep their
// price). A billing period is charged in one currency: its fees prorate
// across its plans, and a statement adds its rows up.
func (s *shard) mixesCurrencies(rules SubscriptionRules, ev *Event) string {
	cust := s.customers.get(ev.Customer)
	startNs, endNs := billingPeriod(ev.TimeNs, cust.loc, cust.anchorDay)
	start, end := time.Unix(0, startNs).UTC(), time.Unix(0, endNs).UTC()
	after := s.subscriber(ev.Customer)
	after.Changes = append(slices.Clone(after.Changes), rating.Change{At: time.Unix(0, ev.TimeNs).UTC(), Plan: ev.Plan})
	slices.SortStableFunc(after.Changes, func(a, b rating.Change) int { return a.At.Compare(b.At) })
	if cur := rules.PeriodCurrencies(after, start, end); len(cur) > 1 {
		return fmt.Sprintf("%s to plan %s would put the billing period %s..%s in %v: a period is charged in one currency; date a currency change at the start of a period before any of its usage (the next: %s)",
			ev.Meter, ev.Plan, start.Format(time.RFC3339), end.Format(time.RFC3339), cur, end.Format(time.RFC3339))
	}
	newCur, ok := rules.PlanCurrency(ev.Plan, time.Unix(0, ev.TimeNs).UTC())
	id, found := s.names.find(ev.Customer)
	if !ok || !found {
		return ""
	}
	// The period aggregates hold what the period's rows charged (their
	// windows may have left memory).
	for _, p := range s.byCustomer[id] {
		if !p.key.period || p.key.startNs != startNs || p.get(numEmittedQuantity).IsZero() && p.get(numChargedAmount).IsZero() && p.revision == 0 {
			continue
		}
		m := s.meter(p)
		if cur, ok := s.rater.Currency(s.subscriber(ev.Customer), m.Name, start); ok && cur != newCur {
			return fmt.Sprintf("%s to plan %s (%s): the billing period %s..%s already emitted rows in %s (they keep their price); date a currency change at the start of a period before any of its usage (the next: %s)",
				ev.Meter, ev.Plan, newCur, start.Format(time.RFC3339), end.Format(time.RFC3339), cur, end.Format(time.RFC3339))
		}
	}
	return ""
}

// checkSubscriptionCurrencies refuses configured subscriptions that put two
// currencies in one billing period of a customer (a period is charged in
// one currency: its fees prorate across its plans).
func checkSubscriptionCurrencies(rater Rater, registry *customers) error {
	rules, ok := rater.(SubscriptionRules)
	if !ok {
		return nil
	}
	for _, customer := range rules.Subscribers() {
		cust := registry.get(customer)
		for _, t := range rules.ConfiguredChanges(customer) {
			startNs, endNs := billingPeriod(t.UnixNano(), cust.loc, cust.anchorDay)
			start, end := time.Unix(0, startNs).UTC(), time.Unix(0, endNs).UTC()
			if cur := rules.PeriodCurrencies(rating.Subscriber{ID: customer}, start, end); len(cur) > 1 {
				return configError("subscriptions", "customer %s is subscribed to plans in %v within the billing period %s..%s; a period is charged in one currency: start and end a subscription in another currency at a period's start",
					customer, cur, start.Format(time.RFC3339), end.Format(time.RFC3339))
			}
		}
	}
	return nil
}

// feeStart is a subscriber whose fee periods are not opened yet, and the
// instant to open them from: feeFromSubscription for the start of its
// subscription.
type feeStart struct {
	customer string
	fromNs   int64
}

// feeFromSubscription asks openFeePeriods to open a subscriber's fee
// periods from the start of its subscription (floored at the horizon).
const feeFromSubscription = minWatermark

// addFeeCustomer makes a new subscriber owe period fees for every billing
// period from the start of its subscription: a customer first met in a
// fresh state or through a subscription event. Which barrier first sees it
// does not matter, so the fee rows of a given input do not depend on when
// checkpoints were cut.
func (s *shard) addFeeCustomer(customer string) {
	s.addFeeCustomerFrom(customer, feeFromSubscription)
}

// addFeeCustomerFrom makes customer owe period fees from the billing period
// holding fromNs on (feeFromSubscription: from its subscription's start).
// Recovery uses the stored watermark: periods before it were opened by the
// run that wrote the state, and every period from it on settles after
// anything that run deleted, so each is opened and owes its fee row even if
// the recovered watermark already made it final (openFeePeriods).
func (s *shard) addFeeCustomerFrom(customer string, fromNs int64) {
	if !s.feeCustomers[customer] {
		s.feeCustomers[customer] = true
		s.feeNew = append(s.feeNew, feeStart{customer: customer, fromNs: fromNs})
	}
}

// openFeePeriods makes sure every subscriber has an aggregate for each
// meter its plans charge period fees for, in every billing period the
// watermark has reached: a period without usage still owes its flat fee
// and its commitment, and closing the period emits them. Invariant: each
// subscriber's periods are opened in order, each once, none skipped, however
// far the watermark moved since the previous barrier; so every period the
// watermark passes owes its fee row, whatever the checkpoint timing.
// Subscribers wait in feeNext under the start of the next period to open,
// so a barrier visits only those whose next period has begun.
func (s *shard) openFeePeriods() {
	rules, ok := s.rater.(SubscriptionRules)
	if !ok || s.watermarkNs == minWatermark {
		return
	}
	open := func(customer string, from int64, recovered bool) {
		cust := s.customers.get(customer)
		startNs, endNs := billingPeriod(s.watermarkNs, cust.loc, cust.anchorDay)
		if from == feeFromSubscription {
			subscribed, ok := rules.SubscribedFrom(s.subscriber(customer))
			if !ok {
				from = startNs // no plan yet: a later event opens its own period
			} else {
				from, _ = billingPeriod(max(subscribed.UnixNano(), s.feeFloorNs), cust.loc, cust.anchorDay)
			}
		}
		// Opened even when no longer revisable: never opened before (the
		// invariant above), each still owes its fee row, once.
		walkPeriods(cust, from, startNs, func(tNs int64) { s.openFeePeriodAt(customer, tNs, true, recovered) })
		s.feeNext[endNs] = append(s.feeNext[endNs], customer)
	}
	for _, f := range s.feeNew {
		// Any start but the subscription's is recovery's stored watermark.
		open(f.customer, f.fromNs, f.fromNs != feeFromSubscription)
	}
	s.feeNew = nil
	for next, customers := range s.feeNext {
		if next > s.watermarkNs {
			continue
		}
		delete(s.feeNext, next)
		for _, customer := range customers {
			open(customer, next, false)
		}
	}
}

// openFeePeriodsFrom opens customer's fee aggregates in the billing period
// at tNs and in every later one up to the period holding the watermark
// (none later when the watermark is before tNs).
func (s *shard) openFeePeriodsFrom(customer string, tNs int64) {
	walkPeriods(s.customers.get(customer), tNs, max(tNs, s.watermarkNs), func(tNs int64) { s.openFeePeriod(customer, tNs) })
}

// walkPeriods calls fn with fromNs, then with the start of each following
// billing period of cust that starts at or before untilNs; not at all when
// fromNs is after untilNs.
func walkPeriods(cust customerSpec, fromNs, untilNs int64, fn func(tNs int64)) {
	for fromNs <= untilNs {
		fn(fromNs)
		_, fromNs = billingPeriod(fromNs, cust.loc, cust.anchorDay)
	}
}

// openFeePeriod opens customer's fee aggregates in the billing period at
// tNs, and queues the period's fees to be (re)computed when it has already
// closed. Periods no longer revisable are left alone: they may have been
// emitted and deleted already.
func (s *shard) openFeePeriod(customer string, tNs int64) {
	s.openFeePeriodAt(customer, tNs, false, false)
}

// openFeePeriodAt is openFeePeriod; force opens a period even when it is no
// longer revisable, for the first opening of each period (openFeePeriods).
func (s *shard) openFeePeriodAt(customer string, tNs int64, force, recovered bool) {
	rules, ok := s.rater.(SubscriptionRules)
	if !ok {
		return
	}
	cust := s.customers.get(customer)
	startNs, endNs := billingPeriod(tNs, cust.loc, cust.anchorDay)
	for _, name := range rules.FeeMeters(s.subscriber(customer), time.Unix(0, startNs).UTC(), time.Unix(0, endNs).UTC()) {
		m := s.meters.byName(name)
		if m == nil {
			continue // a plan prices a meter this engine does not read
		}
		settleNs := m.settleEnd(endNs, m.windowLoc(cust))
		// Forcing is for periods that cannot have had state yet: one the
		// store may already have deleted (evicted at or before the last
		// barrier's watermark) may have held usage, and a fresh aggregate
		// would bill it as if it had none. Such a period follows the late
		// rule like any other.
		mayBeDeleted := !recovered && (s.deletedThroughNs != minWatermark && settleNs+s.rules.retentionNs() <= s.deletedThroughNs ||
			settleNs <= s.rules.goneSettleNs) // deleted under an earlier, shorter horizon
		if (!force || mayBeDeleted) && s.rules.late(settleNs-1, settleNs, settleNs, s.watermarkNs) {
			continue
		}
		key := windowKey{meter: uint32(m.index), customer: s.names.id(customer), startNs: startNs, period: true}
		p := s.periods[key]
		if p == nil && !s.rules.hot(settleNs, s.watermarkNs) {
			p = s.loadCold(key, settleNs)
		}
		if p == nil {
			p = &window{key: key, endNs: endNs, periodEndNs: settleNs}
			s.indexPeriod(p)
			s.markDirty(p)
		}
		s.queueFee(p)
	}
}

// queueFee has a closed period's fee row recomputed at the next barrier;
// an open period's fee comes when it closes.
func (s *shard) queueFee(p *window) {
	if s.rules.closed(p.periodEndNs, s.watermarkNs) && s.closedEnds[p.periodEndNs] && !p.feeQueued {
		p.feeQueued = true
		s.feeDue = append(s.feeDue, p)
	}
}

// encodeChanges renders a subscription history: count, then each change's
// time (ns) and plan.
func encodeChanges(changes []rating.Change) []byte {
	b := binary.AppendUvarint(nil, uint64(len(changes)))
	for _, c := range changes {
		b = binary.AppendVarint(b, c.At.UnixNano())
		b = appendBytes(b, []byte(c.Plan))
	}
	return b
}

func decodeChanges(b []byte) ([]rating.Change, error) {
	r := byteReader{b: b}
	n := r.uvarint()
	if r.err == nil && n > uint64(len(b)) {
		return nil, fmt.Errorf("subscription history: %d changes in %d bytes", n, len(b))
	}
	out := make([]rating.Change, 0, n)
	for range n {
		at := r.varint()
		plan := string(r.bytes())
		out = append(out, rating.Change{At: time.Unix(0, at).UTC(), Plan: plan})
	}
	if r.err != nil {
		return nil, fmt.Errorf("subscription history: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("subscription history: %d trailing bytes", len(r.b))
	}
	return out, nil
}
