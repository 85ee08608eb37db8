package engine

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// SLA tracking. Plans set objectives (rating.Objective); service
// performance comes as events on the usage topic, keyed by customer, like
// subscription events:
//
//	{"type":"sla.probe","id":"p-1","customer":"c1","time":"…","ok":true,"latency_ms":182}
//	{"type":"sla.outage","id":"o-1a","customer":"c1","outage":"inc-7","time":"<start>","end":"<end, optional>"}
//	{"type":"sla.issue","id":"i-1","customer":"c1","issue":"T-42","status":"opened","time":"…"}
//
// Each customer's measurements are kept per billing period (slaPeriod) and
// checkpointed. When a period closes, each objective of the plan the
// customer is on at the period's end is measured exactly, and a breach is
// credited as a negative rated row per credited meter (group key
// @sla:<objective>), revised whenever late events or late usage change the
// measurement or the charge, until the period settles.
//
// Rules (README, Plans → SLA objectives). An objective with window: day
// measures each of the period's local days and counts the worst; probes
// are kept by day for it.
//   - availability: 100 × (period − union of outages in it) / period. An
//     outage counts in every period it overlaps; one without an end runs
//     until the watermark (until the period's end once that closed). A
//     later event for the same outage replaces its start and end.
//   - error_rate: 100 × probes not ok / probes (0 without probes).
//   - latency: the nearest-rank percentile of the probes' latencies,
//     rounded up to whole milliseconds: exact at 1 ms (no probes: met).
//   - resolution: 100 × issues opened in the period resolved within
//     `within` / issues opened in it (none: 100). An issue not resolved
//     yet counts as on time until `within` has passed at the watermark;
//     the period stays in memory until it has (evictSLA), so it falls due
//     at the barrier that passes it, whatever the barriers before.
//   - A credit is percent × the period's charge of each creditOn meter
//     (its usage rows and its period fee row), rounded as the plan rounds,
//     the objectives' credits on a meter never past 100% of its charge.
//     Credits are first computed when every meter's period closed (the
//     latest settle end), and follow late changes until it is settled.
//   - An SLA event for a settled period is late (whether or not the period
//     is still in memory); a probe older than the dedup horizon too (it
//     counts, so a retry must be recognised).

// SLA event types.
const (
	slaTypePrefix = "sla."
	SLAProbe      = "sla.probe"
	SLAOutage     = "sla.outage"
	SLAIssue      = "sla.issue"
)

// slaMeter stands for a meter name in the dedup identity of SLA events.
const slaMeter = "@sla"

// SLAGroupPrefix leads the group key of credit rows: @sla:<objective>.
const SLAGroupPrefix = "@sla:"

// maxLatencyMs bounds a probe's latency (an hour).
const maxLatencyMs = 3_600_000

// SLAEvent is what an SLA event carries besides its customer and time.
type SLAEvent struct {
	Kind string // SLAProbe, SLAOutage or SLAIssue
	// Service names the shared service a probe or an outage is of (the
	// event's Customer is then empty); "" for a customer's own.
	Service string
	// Probes.
	OK         bool
	LatencyMs  uint32
	HasLatency bool
	// Ref is the outage's or the issue's id.
	Ref string
	// EndNs is an outage's end (0: not over).
	EndNs int64
	// Resolved is set for an issue's resolution (else it was opened).
	Resolved bool
}

// wireSLA are the fields of SLA events (raw JSON: checked only for them).
type wireSLA struct {
	OK, LatencyMs, Outage, End, Issue, Status, Service json.RawMessage
}

// slaService is the raw service field of an SLA event (nil: none).
func (w *wireEvent) slaService() json.RawMessage {
	raw := w.sla.Service
	if w.SpecVersion != "" {
		raw = w.Data["service"]
	}
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return raw
}

// stringField reads raw, a JSON string or null or absent, into dst.
func stringField(name string, raw json.RawMessage, dst *string) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if err := json.Unmarshal(raw, dst); err != nil {
		return fail(ReasonInvalidField, "field %s is %s, not a string", name, raw)
	}
	return nil
}

// decodeSLA reads an SLA event of type kind.
func (d *Decoder) decodeSLA(ev Event, kind string, w *wireEvent, out []Event) ([]Event, error) {
	raw, prefix := w.sla, ""
	if w.SpecVersion != "" {
		raw = wireSLA{OK: w.Data["ok"], LatencyMs: w.Data["latency_ms"], Outage: w.Data["outage"],
			End: w.Data["end"], Issue: w.Data["issue"], Status: w.Data["status"], Service: w.Data["service"]}
		prefix = "data."
	}
	f := struct {
		OK, LatencyMs                       json.RawMessage
		Outage, End, Issue, Status, Service string
	}{OK: raw.OK, LatencyMs: raw.LatencyMs}
	for _, s := range [...]struct {
		name string
		raw  json.RawMessage
		dst  *string
	}{{"outage", raw.Outage, &f.Outage}, {"end", raw.End, &f.End}, {"issue", raw.Issue, &f.Issue}, {"status", raw.Status, &f.Status},
		{"service", raw.Service, &f.Service}} {
		if err := stringField(prefix+s.name, s.raw, s.dst); err != nil {
			return out, err
		}
	}
	e := &SLAEvent{Kind: kind, Service: f.Service}
	if f.Service == "" && ev.Customer == "" {
		return out, fail(ReasonMissingField, "no customer (or service, for a probe or an outage of a shared service)")
	}
	if f.Service != "" {
		switch {
		case ev.Customer != "":
			return out, fail(ReasonInvalidField, "%s names both a customer (%s) and a service (%s); name the customer for its own, the service for one every customer on it shares", kind, ev.Customer, f.Service)
		case kind == SLAIssue:
			return out, fail(ReasonInvalidField, "%s names a service (%s); issues are a customer's: name the customer", kind, f.Service)
		}
		if err := checkIdentifier("service", f.Service); err != nil {
			return out, err
		}
	}
	switch kind {
	case SLAProbe:
		if len(f.OK) == 0 || string(f.OK) == "null" {
			return out, fail(ReasonMissingField, "%s has no ok (true when the probe succeeded)", kind)
		}
		if err := json.Unmarshal(f.OK, &e.OK); err != nil {
			return out, fail(ReasonInvalidField, "%s: ok is %s, not true or false", kind, f.OK)
		}
		if len(f.LatencyMs) > 0 && string(f.LatencyMs) != "null" {
			v, n, isInt, err := parseValueInt(f.LatencyMs)
			if err != nil {
				return out, fmt.Errorf("%s latency_ms: %w", kind, err)
			}
			if isInt {
				v = decimal.NewFromInt(n)
			}
			if v.IsNegative() || v.GreaterThan(decimal.NewFromInt(maxLatencyMs)) {
				return out, fail(ReasonInvalidField, "%s: latency_ms %s is outside 0..%d", kind, v, maxLatencyMs)
			}
			e.LatencyMs, e.HasLatency = uint32(v.Ceil().IntPart()), true
		}
	case SLAOutage:
		if f.Outage == "" {
			return out, fail(ReasonMissingField, "%s has no outage (the outage's id; its time is when it started)", kind)
		}
		if err := checkIdentifier("outage", f.Outage); err != nil {
			return out, err
		}
		e.Ref = f.Outage
		if f.End == "" && len(raw.End) > 0 && string(raw.End) != "null" {
			return out, fail(ReasonInvalidField, "%s %s: end is empty; leave it out while the outage goes on", kind, f.Outage)
		}
		if f.End != "" {
			end, err := parseTime(f.End)
			if err != nil {
				return out, fmt.Errorf("%s end: %w", kind, err)
			}
			if end <= ev.TimeNs {
				return out, fail(ReasonInvalidField, "%s %s ends at %s, not after its start %s", kind, f.Outage, f.End, formatTimeNs(ev.TimeNs))
			}
			e.EndNs = end
		}
	case SLAIssue:
		if f.Issue == "" {
			return out, fail(ReasonMissingField, "%s has no issue (the issue's id)", kind)
		}
		if err := checkIdentifier("issue", f.Issue); err != nil {
			return out, err
		}
		e.Ref = f.Issue
		switch f.Status {
		case "":
			return out, fail(ReasonMissingField, "%s %s has no status (opened or resolved)", kind, f.Issue)
		case "opened":
		case "resolved":
			e.Resolved = true
		default:
			return out, fail(ReasonInvalidField, "%s %s: status %q is neither opened nor resolved", kind, f.Issue, f.Status)
		}
	default:
		return out, fail(ReasonInvalidField, "event type %q is not one of %s, %s, %s", kind, SLAProbe, SLAOutage, SLAIssue)
	}
	ev.Meter, ev.SLA = kind, e
	return append(out, ev), nil
}

// interval is an outage's start and end (0: not over).
type interval struct{ startNs, endNs int64 }

// issueTimes are when an issue was opened and resolved (0: not yet).
type issueTimes struct{ openedNs, resolvedNs int64 }

// slaCredit is the credit row last emitted for an objective and a meter.
type slaCredit struct {
	amount   decimal.Decimal
	currency string
	revision uint64
	// quantity and count are the row's measurement and samples (format 4;
	// an older state reads them as 0, so its next recomputation revises
	// the row once with the same amount).
	quantity decimal.Decimal
	count    uint64
}

// slaKey names a customer's billing period.
type slaKey struct {
	customer string
	startNs  int64
}

// slaPeriod is what a customer's SLA events measured in a billing period.
type slaPeriod struct {
	key   slaKey
	endNs int64
	// settleNs is when every meter's period settles (the latest settle
	// end): credits are first computed then, when every meter's charge is
	// complete, and follow late changes until it is settled.
	settleNs int64
	// days are the probes by the customer's local day they fall in.
	days    map[int64]*probeDay
	outages map[string]interval
	issues  map[string]issueTimes
	// credits are the rows emitted, by objective NUL meter.
	credits map[string]slaCredit
	// charges are what each credited meter charged in the period when
	// credits were last computed: once the period settles, its usage state
	// may be gone (without finalizeAfter), and the charge can no longer
	// change, so an issue falling due later is credited on it.
	charges map[string]decimal.Decimal
}

// probeDay is what one day's probes measured.
type probeDay struct {
	probes, failed uint64
	// latencies counts probes by latency in whole milliseconds.
	latencies map[uint32]uint64
}

// slaPeriodOf returns customer's period holding tNs, made when create is
// set.
func (s *shard) slaPeriodOf(customer string, tNs int64, create bool) *slaPeriod {
	cust := s.customers.get(customer)
	startNs, endNs := billingPeriod(tNs, cust.loc, cust.anchorDay)
	k := slaKey{customer, startNs}
	if sp := s.slaPeriods[k]; sp != nil || !create {
		return sp
	}
	sp := newSLAPeriod(k, endNs, s.slaSettle(cust, endNs))
	s.fileSLAPeriod(sp)
	return sp
}

// newSLAPeriod is an empty SLA period (nothing measured yet).
func newSLAPeriod(k slaKey, endNs, settleNs int64) *slaPeriod {
	return &slaPeriod{key: k, endNs: endNs, settleNs: settleNs, days: map[int64]*probeDay{}, outages: map[string]interval{},
		issues: map[string]issueTimes{}, credits: map[string]slaCredit{}, charges: map[string]decimal.Decimal{}}
}

// slaSettle is when every meter's billing period ending at endNs settles.
func (s *shard) slaSettle(cust customerSpec, endNs int64) int64 {
	settle := endNs
	for _, m := range s.meters.list {
		settle = max(settle, m.settleEnd(endNs, m.windowLoc(cust)))
	}
	return settle
}

func (s *shard) fileSLAPeriod(sp *slaPeriod) {
	s.slaPeriods[sp.key] = sp
	s.slaByCustomer[sp.key.customer] = append(s.slaByCustomer[sp.key.customer], sp)
	s.slaBySettle[sp.settleNs] = append(s.slaBySettle[sp.settleNs], sp)
	if len(sp.outages) > 0 {
		s.slaOngoing[sp.key.customer] = true // the next barrier extends what it must, and unmarks it
	}
	if sp.unresolved() {
		s.slaPending[sp.key] = sp
	}
}

// unresolved reports whether an issue opened in sp is not resolved yet.
func (sp *slaPeriod) unresolved() bool {
	for _, it := range sp.issues {
		if it.resolvedNs == 0 {
			return true
		}
	}
	return false
}

// slaSettled reports whether a period settling at settleNs takes no more
// events at the watermark (timeRules.late's period rules).
func (s *shard) slaSettled(settleNs int64) bool {
	return s.rules.late(s.watermarkNs, settleNs, settleNs, s.watermarkNs)
}

// slaClosed reports whether sp's credits are due: every meter's period
// has closed, so their charges are complete.
func (s *shard) slaClosed(sp *slaPeriod, wm int64) bool { return s.rules.closed(sp.settleNs, wm) }

// touchSLA marks sp changed: checkpointed, and its credits recomputed if
// they are due.
func (s *shard) touchSLA(sp *slaPeriod) {
	s.pending.slaDirty[sp.key] = true
	if s.slaClosed(sp, s.watermarkNs) {
		s.slaDue[sp.key] = sp
	}
	if sp.unresolved() {
		s.slaPending[sp.key] = sp
	}
}

// applySLA records an SLA event.
//
// Invariant (exactly once): the periods it changes are marked dirty with
// the dedup id remembered, so one checkpoint holds both; the credits they
// call for are rows of the barrier that recomputes them. An event for a
// settled period is late whether or not the period is still in memory, so
// what counts does not depend on when barriers ran.
func (s *shard) applySLA(ev *Event) {
	e := ev.SLA
	if !s.measuresSLA {
		if e.Service == "" || s.index == 0 { // a service's event: one dead letter for every shard's copy
			s.deadLetter(ev, ReasonInvalidField, "no plan sets SLA objectives (sla), so there is nothing to measure")
		}
		return
	}
	if e.Service != "" {
		s.applyServiceSLA(ev)
		return
	}
	late := func(what string) {
		s.deadLetter(ev, ReasonLate, fmt.Sprintf("%s: %s: watermark %s", ev.Meter, what, formatTimeNs(s.watermarkNs)))
	}
	cust := s.customers.get(ev.Customer)
	_, endNs := billingPeriod(ev.TimeNs, cust.loc, cust.anchorDay)
	// An issue counts in the period it was opened in: the first opening
	// (an issue opened again is the same issue), and the first resolution.
	var opened *slaPeriod
	// Settled periods do not count, in memory or not (one kept for an
	// issue still open must not change what happens).
	if e.Kind == SLAIssue {
		for _, sp := range s.slaByCustomer[ev.Customer] {
			if it, ok := sp.issues[e.Ref]; ok && !s.slaSettled(sp.settleNs) && (opened == nil || it.openedNs < opened.issues[e.Ref].openedNs) {
				opened = sp
			}
		}
	}
	switch {
	case e.Kind == SLAIssue && e.Resolved && opened == nil:
		late(fmt.Sprintf("%s is resolved but was never opened in a billing period still open to revision (the one it was opened in may be settled)", e.Ref))
		return
	case e.Kind == SLAIssue && e.Resolved && ev.TimeNs < opened.issues[e.Ref].openedNs:
		it := opened.issues[e.Ref]
		s.deadLetter(ev, ReasonInvalidField, fmt.Sprintf("%s %s is resolved at %s, before it was opened (%s)", SLAIssue, e.Ref, formatTimeNs(ev.TimeNs), formatTimeNs(it.openedNs)))
		return
	case e.Kind == SLAOutage && !s.outageRevisable(ev):
		late("every billing period the outage overlaps is settled")
		return
	case (e.Kind == SLAProbe || e.Kind == SLAIssue && !e.Resolved) && s.slaSettled(s.slaSettle(cust, endNs)):
		late(fmt.Sprintf("the billing period of %s is settled", formatTimeNs(ev.TimeNs)))
		return
	case e.Kind == SLAProbe && floorDiv(ev.TimeNs, dedupBucketNs) < s.rules.dedupExpiry(s.watermarkNs):
		// A probe counts, so a retry of one must be known: older than the
		// dedup horizon it could not be (outages and issues are
		// idempotent by their ids, so they may come later).
		late(fmt.Sprintf("probe of %s is older than dedupHorizon, so a retry of it could not be recognised", formatTimeNs(ev.TimeNs)))
		return
	}
	if s.seen(ev, eventIDHash(ev.Source, ev.ID, slaMeter)) {
		s.pending.duplicates[slaMeter]++
		return
	}
	switch {
	case e.Kind == SLAProbe:
		sp := s.slaPeriodOf(ev.Customer, ev.TimeNs, true)
		addProbe(sp.days, dayStart(ev.TimeNs, cust.loc), e)
		s.touchSLA(sp)
	case e.Kind == SLAIssue && e.Resolved:
		if it := opened.issues[e.Ref]; it.resolvedNs == 0 { // the first resolution counts
			it.resolvedNs = ev.TimeNs
			opened.issues[e.Ref] = it
			s.touchSLA(opened)
		}
	case e.Kind == SLAIssue:
		if opened == nil { // opened again: the first opening counts
			sp := s.slaPeriodOf(ev.Customer, ev.TimeNs, true)
			sp.issues[e.Ref] = issueTimes{openedNs: ev.TimeNs}
			s.touchSLA(sp)
		}
	case e.Kind == SLAOutage:
		s.applyOutage(ev.Customer, e.Ref, interval{ev.TimeNs, e.EndNs})
	}
}

// outageRevisable reports whether some period the outage of ev overlaps
// still takes events.
func (s *shard) outageRevisable(ev *Event) bool {
	cust := s.customers.get(ev.Customer)
	revisable := false
	walkPeriods(cust, ev.TimeNs, s.outageLast(interval{ev.TimeNs, ev.SLA.EndNs}), func(tNs int64) {
		_, endNs := billingPeriod(tNs, cust.loc, cust.anchorDay)
		revisable = revisable || !s.slaSettled(s.slaSettle(cust, endNs))
	})
	return revisable
}

// outageLast is the last instant of o's periods so far: its end's, but
// never past the watermark's period (an outage ending later, or not over,
// reaches the next periods as the watermark does: extendOutages).
func (s *shard) outageLast(o interval) int64 {
	last := max(o.startNs, s.watermarkNs)
	if o.endNs != 0 {
		last = min(last, o.endNs-1)
	}
	return last
}

// applyOutage records outage ref of customer, as an event reports it, in
// every period it overlaps so far that still takes events, and as its new
// start and end in the unsettled periods that hold it already. The copy
// known before is first extended up to the watermark (extendOutage), so
// what a period settled in between holds does not depend on when barriers
// ran.
func (s *shard) applyOutage(customer, ref string, o interval) {
	s.extendOutage(customer, ref)
	for _, sp := range s.slaByCustomer[customer] {
		if prev, ok := sp.outages[ref]; ok && prev != o && !s.slaSettled(sp.settleNs) {
			sp.outages[ref] = o
			s.touchSLA(sp)
		}
	}
	if o.endNs == 0 || o.endNs > s.watermarkNs {
		s.slaOngoing[customer] = true // the next barriers extend it
	}
	cust := s.customers.get(customer)
	walkPeriods(cust, o.startNs, s.outageLast(o), func(tNs int64) {
		_, endNs := billingPeriod(tNs, cust.loc, cust.anchorDay)
		if s.slaSettled(s.slaSettle(cust, endNs)) {
			return
		}
		sp := s.slaPeriodOf(customer, tNs, true)
		if _, ok := sp.outages[ref]; !ok {
			sp.outages[ref] = o
			s.touchSLA(sp)
		}
	})
}

// extendOutage records outage ref of customer, as its latest period
// holding it has it (that period took every correction an earlier one
// did), in the periods after that one the watermark has reached since, up
// to the outage's end, and reports whether the outage is not over at the
// watermark.
//
// Invariant (credits independent of barrier timing): those periods began
// after the watermark the outage was last recorded at, so it was known
// before they settled. They take it even when the watermark has passed
// their settle end since (it may jump a whole period between two
// barriers); the latest holder is never evicted before the outage
// reached the period after it, as extension runs before eviction at each
// barrier.
func (s *shard) extendOutage(customer, ref string) (ongoing bool) {
	var last *slaPeriod
	for _, sp := range s.slaByCustomer[customer] {
		if _, ok := sp.outages[ref]; ok && (last == nil || sp.key.startNs > last.key.startNs) {
			last = sp
		}
	}
	if last == nil {
		return false
	}
	if s.slaExtendedWm != minWatermark && s.rules.late(s.slaExtendedWm, last.settleNs, last.settleNs, s.slaExtendedWm) {
		// Settled at the last barrier, which extended every copy that
		// mattered: its copy is frozen (maybe stale), and the periods after
		// it may have been evicted since.
		return false
	}
	o := last.outages[ref]
	cust := s.customers.get(customer)
	walkPeriods(cust, last.endNs, s.outageLast(o), func(tNs int64) {
		sp := s.slaPeriodOf(customer, tNs, true)
		if _, ok := sp.outages[ref]; !ok {
			sp.outages[ref] = o
			s.touchSLA(sp)
		}
	})
	return o.endNs == 0 || o.endNs > s.watermarkNs
}

// extendOutages extends the outages of the customers marked ongoing at a
// barrier, before credits; a customer stays marked while one of its
// outages is not over at the watermark. (An outage that ended while the
// watermark jumped past it is extended up to its end once more.)
func (s *shard) extendOutages() {
	for customer := range s.slaOngoing {
		refs := map[string]bool{}
		for _, sp := range s.slaByCustomer[customer] {
			for ref := range sp.outages {
				refs[ref] = true
			}
		}
		ongoing := false
		for _, ref := range slices.Sorted(maps.Keys(refs)) {
			ongoing = s.extendOutage(customer, ref) || ongoing
		}
		if !ongoing {
			delete(s.slaOngoing, customer)
		}
	}
}

// dayStart is the start of the local day in loc holding tNs.
func dayStart(tNs int64, loc *time.Location) int64 {
	t := time.Unix(0, tNs).In(loc)
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc).UnixNano()
}

// slaSamples are the probes and outages an objective measures in a
// period: the customer's own, and its service's (serviceSamples).
type slaSamples struct {
	// probes are keyed by the start of the span they fall in: a day of
	// the customer's, or a quarter hour of a service's.
	probes  []map[int64]*probeDay
	outages []interval
}

// samples is what o measures in sp.
func (s *shard) samples(sp *slaPeriod, o *rating.Objective) slaSamples {
	x := slaSamples{probes: []map[int64]*probeDay{sp.days}, outages: slices.Collect(maps.Values(sp.outages))} // downtime orders them
	s.serviceSamples(&x, sp, o)
	return x
}

// measure is what s measures for o in sp, with outages not over counted
// until untilNs (capped at the period's end): over the whole period, or,
// with window day, the worst of its days (in the customer's zone), with
// the samples of them all.
func (s *shard) measure(sp *slaPeriod, o *rating.Objective, untilNs int64) rating.Measurement {
	return sp.measure(o, s.samples(sp, o), untilNs, s.customers.get(sp.key.customer).loc)
}

// measure is what x measured for o in sp (shard.measure).
func (sp *slaPeriod) measure(o *rating.Objective, x slaSamples, untilNs int64, loc *time.Location) rating.Measurement {
	if o.Window != "day" {
		return sp.measureIn(o, x, untilNs, sp.key.startNs, sp.endNs)
	}
	var worst rating.Measurement
	var samples uint64
	first := true
	for from := sp.key.startNs; from < sp.endNs; {
		t := time.Unix(0, from).In(loc)
		to := min(time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc).UnixNano(), sp.endNs)
		m := sp.measureIn(o, x, untilNs, from, to)
		samples += m.Samples
		if first || o.Kind.HigherIsBetter() && m.Less(worst) || !o.Kind.HigherIsBetter() && worst.Less(m) {
			worst, first = m, false
		}
		from = to
	}
	worst.Samples = samples
	return worst
}

// measureIn is what x measured for o in [from, to) of sp.
func (sp *slaPeriod) measureIn(o *rating.Objective, x slaSamples, untilNs, from, to int64) rating.Measurement {
	hundred := decimal.NewFromInt(100)
	one := decimal.NewFromInt(1)
	switch o.Kind {
	case rating.Availability:
		down, n := x.downtime(min(untilNs, sp.endNs), from, to)
		return rating.Measurement{Num: hundred.Mul(decimal.NewFromInt(to - from - down)), Den: decimal.NewFromInt(to - from), Samples: n}
	case rating.ErrorRate:
		var probes, failed uint64
		for _, spans := range x.probes {
			for at, d := range spans {
				if from <= at && at < to {
					probes, failed = probes+d.probes, failed+d.failed
				}
			}
		}
		if probes == 0 {
			return rating.Measurement{Num: decimal.Zero, Den: one}
		}
		return rating.Measurement{Num: hundred.Mul(decimal.NewFromUint64(failed)), Den: decimal.NewFromUint64(probes), Samples: probes}
	case rating.Latency:
		ms, n := x.percentile(o.Percentile, from, to)
		return rating.Measurement{Num: decimal.NewFromInt(int64(ms)), Den: one, Samples: n}
	case rating.Resolution:
		var total, onTime uint64
		within := int64(o.Within.Duration)
		for _, it := range sp.issues {
			if it.openedNs < from || it.openedNs >= to {
				continue
			}
			total++
			switch {
			case it.resolvedNs != 0 && it.resolvedNs-it.openedNs <= within:
				onTime++
			case it.resolvedNs == 0 && untilNs-it.openedNs <= within:
				onTime++ // not due yet
			}
		}
		if total == 0 {
			return rating.Measurement{Num: hundred, Den: one}
		}
		return rating.Measurement{Num: hundred.Mul(decimal.NewFromUint64(onTime)), Den: decimal.NewFromUint64(total), Samples: total}
	}
	return rating.Measurement{Num: decimal.Zero, Den: one}
}

// downtime is the union of x's outages within [from, to), those not over
// running until untilNs, and how many outages fall in it.
func (x slaSamples) downtime(untilNs, from, to int64) (down int64, n uint64) {
	var spans []interval
	for _, o := range x.outages {
		end := o.endNs
		if end == 0 {
			end = untilNs
		}
		start, end := max(o.startNs, from), min(end, to)
		if start < end {
			spans = append(spans, interval{start, end})
		}
	}
	slices.SortFunc(spans, func(a, b interval) int { return cmp.Compare(a.startNs, b.startNs) })
	reached := int64(math.MinInt64)
	for _, x := range spans {
		start := max(x.startNs, reached)
		if x.endNs > start {
			down += x.endNs - start
		}
		reached = max(reached, x.endNs)
	}
	return down, uint64(len(spans))
}

// percentile is the nearest-rank percentile of the latencies of x's
// probes in the spans starting in [from, to) (0 without any) and how many
// there are.
func (x slaSamples) percentile(pct decimal.Decimal, from, to int64) (uint32, uint64) {
	merged := map[uint32]uint64{}
	var n uint64
	for _, spans := range x.probes {
		for at, d := range spans {
			if at < from || at >= to {
				continue
			}
			for ms, c := range d.latencies {
				merged[ms] += c
				n += c
			}
		}
	}
	if n == 0 {
		return 0, 0
	}
	// rank = ceil(pct/100 × n), at least 1.
	rank := pct.Mul(decimal.NewFromUint64(n)).Shift(-2).Ceil().IntPart()
	rank = max(rank, 1)
	var seen int64
	for _, ms := range slices.Sorted(maps.Keys(merged)) {
		seen += int64(merged[ms])
		if seen >= rank {
			return ms, n
		}
	}
	return 0, n // unreachable: rank <= n
}

// closeSLA queues the credits of the periods whose meters all closed at
// wm, and of the closed ones where an issue fell due since the last
// barrier, then emits the credits due, in customer and period order.
func (s *shard) closeSLA(wm int64, snap *shardSnapshot) error {
	if !s.measuresSLA {
		return nil
	}
	s.extendOutages()
	s.slaExtendedWm = wm
	for settleNs, sps := range s.slaBySettle {
		if s.slaClosedSettles[settleNs] || !s.rules.closed(settleNs, wm) {
			continue
		}
		// Closed now, or first seen closed in this run (a recovery
		// recomputes them: credits emit only what changed).
		s.slaClosedSettles[settleNs] = true
		for _, sp := range sps {
			s.slaDue[sp.key] = sp
		}
	}
	for k, sp := range s.slaPending {
		if !sp.unresolved() {
			delete(s.slaPending, k)
			continue
		}
		if !s.slaClosed(sp, wm) {
			continue
		}
		within := s.slaWithin(sp) // a plan lookup: once per period
		for _, it := range sp.issues {
			// Due at a barrier past it: an issue becomes late once.
			if due := it.openedNs + within; it.resolvedNs == 0 && due < wm && due >= s.slaLastWm {
				s.slaDue[k] = sp
				break
			}
		}
	}
	s.slaLastWm = wm
	s.serviceTouchedDue(wm)
	due := slices.SortedFunc(maps.Values(s.slaDue), func(a, b *slaPeriod) int {
		if c := strings.Compare(a.key.customer, b.key.customer); c != 0 {
			return c
		}
		return cmp.Compare(a.key.startNs, b.key.startNs)
	})
	clear(s.slaDue)
	for _, sp := range due {
		if err := s.emitCredits(sp, wm, snap); err != nil {
			return err
		}
	}
	return nil
}

// slaWithin is the longest `within` of the resolution objectives any plan
// of sp's customer may set: an issue is surely overdue past it. It is the
// catalog's longest (rules.MaxWithin), or 0 without resolution objectives.
func (s *shard) slaWithin(sp *slaPeriod) int64 {
	rules, ok := s.rater.(SLARules)
	if !ok {
		return 0
	}
	terms, ok := rules.SLA(s.subscriber(sp.key.customer), time.Unix(0, sp.endNs).UTC())
	if !ok {
		return 0
	}
	var within int64
	for _, o := range terms.Objectives {
		if o.Kind == rating.Resolution {
			within = max(within, int64(o.Within.Duration))
		}
	}
	return within
}

// emitCredits emits the credit rows of sp that changed: for each
// objective of the plan at the period's end and each meter it credits,
// percent × the meter's charge in the period, the objectives' credits on
// a meter never passing 100% of its charge (in the plan's order); a
// credit no longer owed (the plan or the measurement changed) is revised
// to 0.
func (s *shard) emitCredits(sp *slaPeriod, wm int64, snap *shardSnapshot) error {
	rules, ok := s.rater.(SLARules)
	if !ok {
		return nil
	}
	customer := sp.key.customer
	start, end := time.Unix(0, sp.key.startNs).UTC(), time.Unix(0, sp.endNs).UTC()
	want := map[string]RatedRow{}
	terms, ok := rules.SLA(s.subscriber(customer), end)
	if ok {
		left := map[string]decimal.Decimal{} // percent of each meter's charge not credited yet
		for i := range terms.Objectives {
			o := &terms.Objectives[i]
			m := s.measure(sp, o, wm)
			_, percent := o.Evaluate(m)
			for _, meter := range o.CreditOn {
				if _, ok := left[meter]; !ok {
					left[meter] = decimal.NewFromInt(100)
				}
				p := decimal.Min(percent, left[meter])
				left[meter] = left[meter].Sub(p)
				charge, found, err := s.periodCharge(customer, meter, sp.key.startNs, sp.endNs)
				if err != nil {
					return err
				}
				if found && !charge.Equal(sp.charges[meter]) {
					sp.charges[meter] = charge
					s.pending.slaDirty[sp.key] = true
				}
				charge = sp.charges[meter]
				amount := decimal.Zero
				if p.IsPositive() {
					amount = terms.Credit(charge, p)
				}
				want[o.Name+"\x00"+meter] = RatedRow{
					Tenant: s.tenant, Meter: meter, Customer: customer, GroupKey: SLAGroupPrefix + o.Name,
					WindowStart: start, WindowEnd: end, Quantity: m.Value(), Count: m.Samples,
					Amount: amount, Currency: terms.Currency, Final: true,
					Breakdown: []rating.Line{{
						Description: creditExplanation(o, m, p, meter),
						Units:       charge, UnitPrice: p.Shift(-2).Neg(), Amount: amount,
					}},
				}
			}
		}
	}
	for k, prev := range sp.credits {
		if _, ok := want[k]; !ok && !prev.amount.IsZero() {
			objective, meter, _ := strings.Cut(k, "\x00")
			want[k] = RatedRow{Tenant: s.tenant, Meter: meter, Customer: customer, GroupKey: SLAGroupPrefix + objective,
				WindowStart: start, WindowEnd: end, Amount: decimal.Zero, Currency: prev.currency, Final: true,
				Breakdown: []rating.Line{{Description: fmt.Sprintf("SLA %s: no longer credited (the plan at the period's end sets no such objective)", objective)}}}
		}
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		row := want[k]
		prev, emitted := sp.credits[k]
		// A measurement that changed revises the row even when its credit
		// did not (the row says what was measured).
		same := emitted && prev.amount.Equal(row.Amount) && prev.currency == row.Currency && prev.quantity.Equal(row.Quantity) && prev.count == row.Count
		if same || !emitted && row.Amount.IsZero() {
			continue
		}
		row.Revision = prev.revision + 1
		if ok {
			row.Plan = terms.Plan
		}
		row.setDeltas(decimal.Zero, prev.amount, false)
		if emitted && prev.currency != row.Currency {
			// One row cannot move two currencies: the new one gets the
			// whole amount (README, rollups: a known limit).
			row.AmountDelta = row.Amount
			snap.revenue[prev.currency] = snap.revenue[prev.currency].Sub(prev.amount)
			snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount)
		} else {
			snap.revenue[row.Currency] = snap.revenue[row.Currency].Add(row.Amount.Sub(prev.amount))
		}
		sp.credits[k] = slaCredit{amount: row.Amount, currency: row.Currency, revision: row.Revision, quantity: row.Quantity, count: row.Count}
		s.pending.slaDirty[sp.key] = true
		snap.addRow(&row)
		snap.credits++
	}
	return nil
}

// creditExplanation is a credit row's line: what was measured against
// what, and the credit it earns.
func creditExplanation(o *rating.Objective, m rating.Measurement, percent decimal.Decimal, meter string) string {
	what := map[rating.ObjectiveKind]string{
		rating.Availability: "availability %s%% (target %s%%)",
		rating.ErrorRate:    "error rate %s%% (target %s%%)",
		rating.Latency:      "p" + o.Percentile.String() + " latency %s ms (target %s ms)",
		rating.Resolution:   "issues resolved within " + o.Within.String() + ": %s%% (target %s%%)",
	}[o.Kind]
	text := fmt.Sprintf("SLA %s: "+what, o.Name, m.Value(), o.Target)
	if !percent.IsPositive() {
		return text + ": no credit"
	}
	return fmt.Sprintf("%s: credit %s%% of the period's %s charge", text, percent, meter)
}

// periodCharge is what customer's billing period starting at startNs
// charged for meter so far: its usage rows and its period fee row; found
// is false when its state is gone (settled) or it has none.
func (s *shard) periodCharge(customer, meter string, startNs, endNs int64) (charge decimal.Decimal, found bool, err error) {
	m := s.meters.byName(meter)
	if m == nil {
		return decimal.Zero, false, nil // priced but not metered: nothing charged
	}
	key := windowKey{meter: uint32(m.index), customer: s.names.id(customer), startNs: startNs, period: true}
	p := s.periods[key]
	if p == nil {
		cust := s.customers.get(customer)
		p = s.loadCold(key, m.settleEnd(endNs, m.windowLoc(cust)))
		if s.pending.storeErr != nil {
			return decimal.Zero, false, fmt.Errorf("engine: read the period of %s/%s for its SLA credit: %w", customer, meter, s.pending.storeErr)
		}
	}
	if p == nil {
		return decimal.Zero, false, nil
	}
	return p.get(numChargedAmount).Add(p.get(numEmittedAmount)), true, nil
}

// creditsOnFees records, after a barrier charged periods (closing them or
// revising them: fees), what each charged in its SLA period, which it
// then marks due: a meter's period may settle, and leave the store, well
// before the SLA period's latest settle end, when its credits are first
// computed (monthly windows beside hourly ones).
func (s *shard) creditsOnFees(fees []*window) {
	if !s.measuresSLA {
		return
	}
	rules, _ := s.rater.(SLARules)
	for _, p := range fees {
		customer := s.names.str(p.key.customer)
		sp := s.slaPeriods[slaKey{customer, p.key.startNs}]
		if sp == nil {
			// Its SLA events may come later, when this meter's period may
			// have left the store: keep its charge now if the plan at the
			// period's end credits anything.
			_, endNs := billingPeriod(p.key.startNs, s.customers.get(customer).loc, s.customers.get(customer).anchorDay)
			if rules == nil {
				continue
			}
			if _, ok := rules.SLA(s.subscriber(customer), time.Unix(0, endNs).UTC()); !ok {
				continue
			}
			sp = s.slaPeriodOf(customer, p.key.startNs, true)
		}
		name := s.meter(p).Name
		if charge := p.get(numChargedAmount).Add(p.get(numEmittedAmount)); !charge.Equal(sp.charges[name]) {
			sp.charges[name] = charge
			s.pending.slaDirty[sp.key] = true
		}
		if s.slaClosed(sp, s.watermarkNs) {
			s.slaDue[sp.key] = sp
		}
	}
}

// creditsOnPlanChange marks customer's closed, unsettled SLA periods ending
// after a plan change at atNs: the plan at their end, whose objectives
// they are credited by, may be another.
func (s *shard) creditsOnPlanChange(customer string, atNs int64) {
	for _, sp := range s.slaByCustomer[customer] {
		if sp.endNs > atNs && s.slaClosed(sp, s.watermarkNs) && !s.slaSettled(sp.settleNs) {
			s.slaDue[sp.key] = sp
		}
	}
}

// evictSLA drops the periods settled at wm from memory and the store, once
// their credits are final: no credit due, and no unresolved issue that
// could still fall due (so the last credits never depend on which barrier
// settled them).
func (s *shard) evictSLA(wm int64, snap *shardSnapshot) {
	for settleNs, sps := range s.slaBySettle {
		if !s.slaSettled(settleNs) {
			continue
		}
		keep := sps[:0]
		for _, sp := range sps {
			if s.slaDue[sp.key] != nil || sp.unresolved() && s.issuesDueAfter(sp, wm) {
				keep = append(keep, sp)
				continue
			}
			delete(s.slaPeriods, sp.key)
			delete(s.slaPending, sp.key)
			delete(s.pending.slaDirty, sp.key)
			list := slices.DeleteFunc(s.slaByCustomer[sp.key.customer], func(x *slaPeriod) bool { return x == sp })
			if len(list) == 0 {
				delete(s.slaByCustomer, sp.key.customer)
			} else {
				s.slaByCustomer[sp.key.customer] = list
			}
			snap.slaDeletes = append(snap.slaDeletes, slaStoreKey(sp.key))
		}
		if len(keep) == 0 {
			delete(s.slaBySettle, settleNs)
			delete(s.slaClosedSettles, settleNs)
		} else {
			s.slaBySettle[settleNs] = keep
		}
	}
}

// issuesDueAfter reports whether an unresolved issue of sp falls due
// (opened + within) at or after wm.
func (s *shard) issuesDueAfter(sp *slaPeriod, wm int64) bool {
	within := s.slaWithin(sp)
	for _, it := range sp.issues {
		if it.resolvedNs == 0 && it.openedNs+within >= wm {
			return true
		}
	}
	return false
}

// SLARules is what the engine needs of a Rater to credit SLA breaches
// (rating.Pricing has it).
type SLARules interface {
	// SLA is the objectives of the plan pricing sub at the end of the
	// billing period ending at periodEnd.
	SLA(sub rating.Subscriber, periodEnd time.Time) (rating.SLATerms, bool)
	// HasSLA reports whether any plan sets objectives.
	HasSLA() bool
	// MeasuresService reports whether an objective measures the shared
	// service.
	MeasuresService(service string) bool
	// MaxWithin is the longest `within` of the resolution objectives.
	MaxWithin() time.Duration
}

// slaStoreKey is sp's key in the store: customer NUL start (8 bytes).
func slaStoreKey(k slaKey) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(k.customer), 0), uint64(k.startNs))
}

// slaFormat leads an encoded SLA period (2: credits carry their
// currency; 3: probes by day; 4: credits carry their measurement).
const slaFormat = 4

func encodeSLAPeriod(sp *slaPeriod) []byte {
	b := []byte{slaFormat}
	b = binary.AppendVarint(b, sp.endNs)
	b = binary.AppendUvarint(b, uint64(len(sp.days)))
	for _, day := range slices.Sorted(maps.Keys(sp.days)) {
		b = binary.AppendVarint(b, day)
		b = appendProbeDay(b, sp.days[day])
	}
	b = binary.AppendUvarint(b, uint64(len(sp.outages)))
	for _, ref := range slices.Sorted(maps.Keys(sp.outages)) {
		o := sp.outages[ref]
		b = appendBytes(b, []byte(ref))
		b = binary.AppendVarint(b, o.startNs)
		b = binary.AppendVarint(b, o.endNs)
	}
	b = binary.AppendUvarint(b, uint64(len(sp.issues)))
	for _, ref := range slices.Sorted(maps.Keys(sp.issues)) {
		it := sp.issues[ref]
		b = appendBytes(b, []byte(ref))
		b = binary.AppendVarint(b, it.openedNs)
		b = binary.AppendVarint(b, it.resolvedNs)
	}
	b = binary.AppendUvarint(b, uint64(len(sp.credits)))
	for _, k := range slices.Sorted(maps.Keys(sp.credits)) {
		c := sp.credits[k]
		b = appendBytes(b, []byte(k))
		b = appendDecimal(b, c.amount)
		b = appendBytes(b, []byte(c.currency))
		b = binary.AppendUvarint(b, c.revision)
		b = appendDecimal(b, c.quantity)
		b = binary.AppendUvarint(b, c.count)
	}
	b = binary.AppendUvarint(b, uint64(len(sp.charges)))
	for _, meter := range slices.Sorted(maps.Keys(sp.charges)) {
		b = appendBytes(b, []byte(meter))
		b = appendDecimal(b, sp.charges[meter])
	}
	return b
}

func decodeSLAPeriod(key, v []byte) (*slaPeriod, error) {
	if len(key) < 9 || key[len(key)-9] != 0 {
		return nil, fmt.Errorf("SLA period key %q is not customer NUL start", key)
	}
	k := slaKey{customer: string(key[:len(key)-9]), startNs: int64(binary.BigEndian.Uint64(key[len(key)-8:]))}
	r := byteReader{b: v}
	format := r.byte()
	if r.err == nil && (format < 2 || format > slaFormat) {
		return nil, fmt.Errorf("SLA period of %s: format %d, this version reads 2 to %d", k.customer, format, slaFormat)
	}
	sp := newSLAPeriod(k, 0, 0)
	sp.endNs = r.varint()
	count := func() uint64 {
		n := r.uvarint()
		if r.err == nil && n > uint64(len(v)) {
			r.setErr(fmt.Errorf("%d entries in %d bytes", n, len(v)))
			return 0
		}
		return n
	}
	probeDayOf := func() *probeDay { return readProbeDay(&r, len(v)) }
	if format == 2 {
		// Probes of the whole period, before they were kept by day: one
		// day at the period's start holds them (period measurements stay
		// exact; a day window sees them on that day).
		if d := probeDayOf(); d.probes > 0 {
			sp.days[sp.key.startNs] = d
		}
	} else {
		for range count() {
			day := r.varint()
			sp.days[day] = probeDayOf()
		}
	}
	for range count() {
		ref := string(r.bytes())
		sp.outages[ref] = interval{r.varint(), r.varint()}
	}
	for range count() {
		ref := string(r.bytes())
		sp.issues[ref] = issueTimes{r.varint(), r.varint()}
	}
	for range count() {
		k := string(r.bytes())
		c := slaCredit{amount: r.decimal(), currency: string(r.bytes()), revision: r.uvarint()}
		if format >= 4 {
			c.quantity, c.count = r.decimal(), r.uvarint()
		}
		sp.credits[k] = c
	}
	for range count() {
		meter := string(r.bytes())
		sp.charges[meter] = r.decimal()
	}
	if r.err != nil {
		return nil, fmt.Errorf("SLA period of %s: %w", k.customer, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("SLA period of %s: %d trailing bytes", k.customer, len(r.b))
	}
	return sp, nil
}

// addProbe counts probe e in the span of spans starting at start.
func addProbe(spans map[int64]*probeDay, start int64, e *SLAEvent) {
	d := spans[start]
	if d == nil {
		d = &probeDay{latencies: map[uint32]uint64{}}
		spans[start] = d
	}
	d.probes++
	if !e.OK {
		d.failed++
	}
	if e.HasLatency {
		d.latencies[e.LatencyMs]++
	}
}

// appendProbeDay appends d's encoding to b.
func appendProbeDay(b []byte, d *probeDay) []byte {
	b = binary.AppendUvarint(b, d.probes)
	b = binary.AppendUvarint(b, d.failed)
	b = binary.AppendUvarint(b, uint64(len(d.latencies)))
	for _, ms := range slices.Sorted(maps.Keys(d.latencies)) {
		b = binary.AppendUvarint(b, uint64(ms))
		b = binary.AppendUvarint(b, d.latencies[ms])
	}
	return b
}

// readProbeDay reads what appendProbeDay wrote, from a value of size
// bytes (which bounds its entries).
func readProbeDay(r *byteReader, size int) *probeDay {
	d := &probeDay{probes: r.uvarint(), failed: r.uvarint(), latencies: map[uint32]uint64{}}
	n := r.uvarint()
	if r.err == nil && n > uint64(size) {
		r.setErr(fmt.Errorf("%d latencies in %d bytes", n, size))
		return d
	}
	for range n {
		ms := r.uvarint()
		d.latencies[uint32(ms)] = r.uvarint()
	}
	return d
}

// snapshotSLA adds the SLA periods changed since the last barrier to snap.
func (s *shard) snapshotSLA(snap *shardSnapshot) {
	for k := range s.pending.slaDirty {
		if sp := s.slaPeriods[k]; sp != nil {
			snap.slaPuts = append(snap.slaPuts, state.KV{Key: slaStoreKey(k), Value: encodeSLAPeriod(sp)})
		}
	}
	clear(s.pending.slaDirty)
}

// restoreSLAPeriod files a stored SLA period at recovery.
func (s *shard) restoreSLAPeriod(sp *slaPeriod) {
	sp.settleNs = s.slaSettle(s.customers.get(sp.key.customer), sp.endNs)
	s.fileSLAPeriod(sp)
}
