package engine

import (
	"container/heap"
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

// Prepaid grants. A plan meter with `entitlement: {of: grants}` is limited
// by the customer's grants of it: units bought ahead, each from its time
// until it expires, that the customer's usage of the meter draws down. A
// grant.created event (published like subscription events: to the usage
// topic, keyed by customer) adds one:
//
//	{"type":"grant.created","id":"g-1","customer":"c1","time":"2026-03-01T00:00:00Z",
//	 "meter":"data_bytes","value":"1000000000","expires":"2026-04-01T00:00:00Z"}
//
// Rules (docs/provisioning.md, README Plans → Grants):
//   - A usage record draws its units, in arrival order, from the grants
//     in force at its time (started, not expired), the one expiring first
//     first; what none covers is overage. Negative values draw nothing.
//   - The limit is the units of the grants in force at the stream's
//     present (the watermark plus the allowed lateness: the latest event
//     time it follows), or at a record's time if later, never at an
//     earlier time than before (balance.clockNs); used is what was drawn
//     from them. A grant starting later joins the limit when the present
//     reaches its start.
//     Thresholds are shares of that limit: with no grant every one is
//     reached.
//   - A grant expires when the watermark passes its expiry (checked before
//     each grant and record of its balance, and at each checkpoint): what
//     is left of it is forfeited, and a record for a time before the
//     expiry that comes after that no longer draws from it. A grant that
//     has expired when it arrives is dead-lettered (late).
//   - A threshold is announced once per cycle. A top-up, a grant starting,
//     or an expiry, that brings usage under announced thresholds starts a
//     new cycle, which announces again every threshold reached (so a top
//     up from suspended to throttled says throttle); if no throttle or
//     suspend threshold is reached any more, the cycle starts with a
//     resume. A plan change settles the balances of the new plan's grants
//     meters, and resumes the blocked balances of meters it no longer
//     limits by grants.
//   - A grant is counted once by its source and id, also when a retry
//     comes after the dedup horizon.
//   - Grants draw down usage; they do not change its price (a prepaid
//     meter's price is what the plan says, often 0).

// GrantCreated is the event type that adds a prepaid grant.
const GrantCreated = "grant.created"

// grantMeter stands for a meter name in the dedup identity of grant
// events.
const grantMeter = "@grant"

// GrantEvent is what a grant.created event adds besides its units (the
// event's value) and start (its time).
type GrantEvent struct {
	// Meter is the meter granted.
	Meter string
	// ExpiresNs is when the grant expires (0: never).
	ExpiresNs int64
	// Currency is set for a grant of money (the event's amount; its value
	// is then the amount), empty for one of units.
	Currency string
}

// decodeGrant reads a grant.created event: meter (the plain form's meter
// field, or data.meter), value (units, positive), expires (optional, after
// the time).
func (d *Decoder) decodeGrant(ev Event, w *wireEvent, rawValue json.RawMessage, out []Event) ([]Event, error) {
	meter, rawExpires, rawAmount, rawCurrency := w.Meter, w.Expires, w.Amount, w.Currency
	if w.SpecVersion != "" {
		meter, rawExpires, rawAmount, rawCurrency = "", w.Data["expires"], w.Data["amount"], w.Data["currency"]
		if err := stringField("data.meter", w.Data["meter"], &meter); err != nil {
			return out, err
		}
	}
	var currency string
	if err := stringField("currency", rawCurrency, &currency); err != nil {
		return out, err
	}
	var expires string
	if err := stringField("expires", rawExpires, &expires); err != nil {
		return out, err
	}
	if meter == "" || meter == GrantCreated {
		return out, fail(ReasonMissingField, "%s has no meter (the meter granted)", GrantCreated)
	}
	spec := d.meters.byName(meter)
	if spec == nil {
		return out, fail(ReasonUnknownMeter, "%s grants meter %q, which is not configured", GrantCreated, meter)
	}
	isMoney := len(rawAmount) > 0 && string(rawAmount) != "null"
	switch {
	case isMoney && len(rawValue) > 0:
		return out, fail(ReasonInvalidField, "%s has both value (units) and amount (money); a grant is of one", GrantCreated)
	case isMoney && (len(currency) != 3 || strings.ToUpper(currency) != currency):
		return out, fail(ReasonInvalidField, "%s of amount %s has currency %q, not an ISO 4217 code such as EUR", GrantCreated, rawAmount, currency)
	case !isMoney && currency != "":
		return out, fail(ReasonInvalidField, "%s has a currency but no amount (money) to go with it", GrantCreated)
	case isMoney:
		rawValue = rawAmount
	}
	if len(rawValue) == 0 {
		return out, fail(ReasonMissingField, "%s has no value (the units granted) or amount and currency (the money granted)", GrantCreated)
	}
	units, n, isInt, err := parseValueInt(rawValue)
	if err != nil {
		return out, fmt.Errorf("%s: %w", GrantCreated, err)
	}
	if isInt {
		units = decimal.NewFromInt(n)
	}
	if !units.IsPositive() {
		return out, fail(ReasonInvalidField, "%s grants %s units; a grant is positive", GrantCreated, units)
	}
	if !isMoney && !spec.Decimal && !units.IsInteger() {
		return out, fail(ReasonInvalidField, "%s grants %s units of meter %s, which counts integers (decimal: true for fractions)", GrantCreated, units, meter)
	}
	g := &GrantEvent{Meter: meter, Currency: currency}
	if expires != "" {
		if g.ExpiresNs, err = parseTime(expires); err != nil {
			return out, fmt.Errorf("%s expires: %w", GrantCreated, err)
		}
		if g.ExpiresNs <= ev.TimeNs {
			return out, fail(ReasonInvalidField, "%s expires at %s, not after its time %s", GrantCreated, expires, formatTimeNs(ev.TimeNs))
		}
	}
	ev.Meter, ev.Grant, ev.value = GrantCreated, g, units
	return append(out, ev), nil
}

// grantLot is one grant and what is left of it.
type grantLot struct {
	source, id         string // the grant event's
	startNs, expiresNs int64  // expiresNs math.MaxInt64: never
	// currency is a money grant's ("" for units): charges in it draw it.
	currency           string
	granted, remaining decimal.Decimal
}

// balance is a customer's grants of one meter and the thresholds
// announced against them.
type balance struct {
	customer, meter string
	// lots are sorted by expiry, then start, then id: the order usage
	// draws them in.
	lots    []grantLot
	overage decimal.Decimal
	// announced is the highest threshold announced in cycle; blocked is
	// set when a throttle or suspend threshold was.
	announced decimal.Decimal
	cycle     uint64
	blocked   bool
	// clockNs is the latest time b was evaluated at (a grant's or record's
	// time, or the watermark): the lots in force are taken at it, so its
	// share never goes back to an earlier view.
	clockNs int64
	// drawnCharge is, for money grants, the most each billing period's
	// charge (the period's running total, signed) has been drawn up to: a
	// charge that falls and rises again draws only past it.
	drawnCharge map[int64]decimal.Decimal
}

// lotCurrency is the currency of the lots me counts: its plan's for money
// grants, "" for units.
func lotCurrency(me rating.MeterEntitlement) string {
	if me.Entitlement.Of == rating.LimitGrantAmount {
		return me.Currency
	}
	return ""
}

// status is b's entitlement me evaluated at atNs: limit the lots of its
// kind in force then, used what was drawn from them.
func (b *balance) status(me rating.MeterEntitlement, atNs int64) (*rating.Entitlement, rating.EntitlementStatus) {
	var granted, remaining decimal.Decimal
	currency := lotCurrency(me)
	for _, l := range b.lots {
		if l.startNs <= atNs && atNs < l.expiresNs && l.currency == currency {
			granted, remaining = granted.Add(l.granted), remaining.Add(l.remaining)
		}
	}
	g := me.Entitlement.WithLimit(granted)
	return g, g.Status(granted.Sub(remaining), decimal.Zero, decimal.Zero)
}

// has reports whether b holds the grant of source and id.
func (b *balance) has(source, id string) bool {
	return slices.ContainsFunc(b.lots, func(l grantLot) bool { return l.source == source && l.id == id })
}

// draw takes v from the lots of currency ("" for units) in force at atNs;
// what they cannot cover is overage.
func (b *balance) draw(v decimal.Decimal, atNs int64, currency string) {
	if v.IsPositive() {
		b.drawOverlapping(v, atNs, atNs+1, currency) // the lots in force at atNs
	}
}

// add files lot in drawing order.
func (b *balance) add(lot grantLot) {
	i, _ := slices.BinarySearchFunc(b.lots, lot, func(a, t grantLot) int {
		switch {
		case a.expiresNs != t.expiresNs:
			return cmpInt64(a.expiresNs, t.expiresNs)
		case a.startNs != t.startNs:
			return cmpInt64(a.startNs, t.startNs)
		}
		return strings.Compare(a.id, t.id)
	})
	b.lots = slices.Insert(b.lots, i, lot)
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// expire drops the lots expired at wm; it reports whether any was. A money
// lot stays moneyGraceNs longer: a window that began before its expiry is
// charged when it closes, after it (status ignores it from its expiry on).
func (b *balance) expire(wm, moneyGraceNs int64) bool {
	n := len(b.lots)
	b.lots = slices.DeleteFunc(b.lots, func(l grantLot) bool {
		if l.currency != "" {
			return l.expiresNs <= wm-moneyGraceNs
		}
		return l.expiresNs <= wm
	})
	return len(b.lots) != n
}

// balanceKey names a balance in the state store and the shard's map.
func balanceKey(customer, meter string) string { return customer + "\x00" + meter }

// grantEntitlement is customer's entitlement on meter at atNs when it is
// limited by grants (of units or of money).
func (s *shard) grantEntitlement(customer, meter string, atNs int64) (rating.MeterEntitlement, bool) {
	me, ok := s.entitlement(customer, meter, atNs)
	return me, ok && me.Entitlement.Of.Grants()
}

// balanceOf returns customer's balance of meter, made when create is set.
func (s *shard) balanceOf(customer, meter string, create bool) *balance {
	k := balanceKey(customer, meter)
	b := s.balances[k]
	if b == nil && create {
		b = &balance{customer: customer, meter: meter}
		s.balances[k] = b
	}
	return b
}

// applyGrant adds the grant of ev to its customer's balance.
//
// Invariant (exactly once): the balance is marked dirty with the dedup id
// remembered and the actions queued, so one checkpoint holds all three; a
// replay after a crash before it adds the grant again, once. The lot's
// source and id keep a retry from counting twice after the dedup horizon.
func (s *shard) applyGrant(ev *Event) {
	meter := ev.Grant.Meter
	if rules, ok := s.rater.(EntitlementRules); !ok || !rules.GrantsLimit(meter) {
		s.deadLetter(ev, ReasonInvalidField, fmt.Sprintf("no plan limits meter %s by grants (entitlement of: grants), so a grant of it has nothing to top up", meter))
		return
	}
	if ev.Grant.ExpiresNs != 0 && s.watermarkNs != minWatermark && ev.Grant.ExpiresNs <= s.watermarkNs {
		s.deadLetter(ev, ReasonLate, fmt.Sprintf("grant expired at %s, before it arrived: watermark %s", formatTimeNs(ev.Grant.ExpiresNs), formatTimeNs(s.watermarkNs)))
		return
	}
	if s.seen(ev, eventIDHash(ev.Source, ev.ID, grantMeter)) {
		s.pending.duplicates[grantMeter]++
		return
	}
	me, limited := s.grantEntitlement(ev.Customer, meter, ev.TimeNs)
	if limited && lotCurrency(me) != ev.Grant.Currency {
		want := "units (value)"
		if me.Entitlement.Of == rating.LimitGrantAmount {
			want = "money in " + me.Currency + " (amount and currency)"
		}
		s.deadLetter(ev, ReasonInvalidField, fmt.Sprintf("plan %s limits meter %s by grants of %s; this grant is of another kind", me.Plan, meter, want))
		return
	}
	key := balanceKey(ev.Customer, meter)
	b := s.balanceOf(ev.Customer, meter, true)
	s.expireBalance(b)
	if b.has(ev.Source, ev.ID) {
		s.pending.duplicates[grantMeter]++
		return
	}
	lot := grantLot{source: ev.Source, id: ev.ID, startNs: ev.TimeNs, expiresNs: math.MaxInt64, granted: ev.Value(), remaining: ev.Value(), currency: ev.Grant.Currency}
	if ev.Grant.ExpiresNs != 0 {
		lot.expiresNs = ev.Grant.ExpiresNs
		heap.Push(&s.grantTimes, grantTime{atNs: lot.expiresNs, key: key})
	}
	present := s.rules.present(s.watermarkNs)
	if lot.startNs > present {
		heap.Push(&s.grantTimes, grantTime{atNs: lot.startNs, key: key}) // it joins the limit then
	}
	b.add(lot)
	s.pending.balancesDirty[key] = true
	// Before any watermark the present is unknown: the first barrier
	// settles the balance, at the present it knows (expireGrants).
	if limited && present != minWatermark {
		s.settleBalance(b, me, present, ev.TimeNs)
	}
}

// drawGrants draws ev's units from its customer's grants when its meter is
// limited by them (under the plan pricing the window starting at
// windowStartNs).
func (s *shard) drawGrants(ev *Event, m *meterSpec, windowStartNs int64) {
	me, ok := s.grantEntitlement(ev.Customer, m.Name, windowStartNs)
	if !ok || me.Entitlement.Of != rating.LimitGrants {
		return
	}
	b := s.balanceOf(ev.Customer, m.Name, true)
	s.expireBalance(b)
	b.draw(ev.Units(), ev.TimeNs, "")
	s.pending.balancesDirty[balanceKey(ev.Customer, m.Name)] = true
	s.settleBalance(b, me, max(ev.TimeNs, s.rules.present(s.watermarkNs)), ev.TimeNs)
}

// drawGrantAmount draws from customer's money grants what meter m's
// billing period p has been charged past what it was drawn up to (p's
// charged total moved, at a window's emission: a charge draws when it is
// known, as an amount limit is watched), when the plan at the window's
// start limits m by them. The high-water mark makes the draws add up to
// the period's charge whatever the order of rises and falls, and so
// whatever the checkpoints. It draws from the grants in force at any time
// of the window [windowStartNs, windowEndNs), before the expiry of those
// that ended since.
func (s *shard) drawGrantAmount(customer string, m *meterSpec, p *window, windowStartNs, windowEndNs int64) {
	me, ok := s.grantEntitlement(customer, m.Name, windowStartNs)
	if !ok || me.Entitlement.Of != rating.LimitGrantAmount {
		return
	}
	b := s.balanceOf(customer, m.Name, true)
	if b.drawnCharge == nil {
		b.drawnCharge = map[int64]decimal.Decimal{}
	}
	total := p.get(numChargedAmount)
	more := total.Sub(b.drawnCharge[p.key.startNs])
	if !more.IsPositive() {
		return
	}
	b.drawnCharge[p.key.startNs] = total
	b.drawOverlapping(more, windowStartNs, windowEndNs, me.Currency)
	s.pending.balancesDirty[balanceKey(customer, m.Name)] = true
	s.expireBalance(b)
	s.settleBalance(b, me, max(windowStartNs, s.rules.present(s.watermarkNs)), windowStartNs)
}

// drawOverlapping takes v from the money lots of currency in force at some
// time of [from, to), the first to expire first; the rest is overage.
func (b *balance) drawOverlapping(v decimal.Decimal, from, to int64, currency string) {
	for i := range b.lots {
		l := &b.lots[i]
		if l.startNs >= to || l.expiresNs <= from || !l.remaining.IsPositive() || l.currency != currency {
			continue
		}
		take := decimal.Min(v, l.remaining)
		l.remaining, v = l.remaining.Sub(take), v.Sub(take)
		if v.IsZero() {
			return
		}
	}
	b.overage = b.overage.Add(v)
}

// moneyGraceNs is how long money lots outlive their expiry: the longest
// window, and the grace its close waits.
func (s *shard) moneyGraceNs() int64 {
	return int64(s.meters.longestWindow()) + s.rules.graceNs
}

// expireBalance drops b's lots expired at the watermark and announces what
// that changes, at the expiry.
func (s *shard) expireBalance(b *balance) {
	if s.watermarkNs == minWatermark {
		return
	}
	var lastNs int64
	for _, l := range b.lots {
		if l.expiresNs <= s.watermarkNs {
			lastNs = max(lastNs, l.expiresNs)
		}
	}
	if !b.expire(s.watermarkNs, s.moneyGraceNs()) {
		return
	}
	s.pending.balancesDirty[balanceKey(b.customer, b.meter)] = true
	if me, ok := s.grantEntitlement(b.customer, b.meter, lastNs); ok {
		s.settleBalance(b, me, s.rules.present(s.watermarkNs), lastNs)
	}
}

// settleGrantsOnPlanChange settles customer's balances after a plan change
// at atNs: the new plan's grants meters are evaluated now (a customer put
// on a prepaid plan without a grant is used up at once), and a balance
// blocked on a meter the new plan no longer limits by grants is resumed.
func (s *shard) settleGrantsOnPlanChange(customer string, atNs int64) {
	rules, ok := s.rater.(EntitlementRules)
	if !ok {
		return
	}
	for _, m := range s.meters.list {
		if !rules.GrantsLimit(m.Name) {
			continue
		}
		me, ok := s.grantEntitlement(customer, m.Name, atNs)
		b := s.balanceOf(customer, m.Name, ok)
		switch {
		case b == nil:
		case ok:
			s.expireBalance(b)
			s.settleBalance(b, me, s.rules.present(s.watermarkNs), atNs)
		case b.blocked && s.watchLimits:
			b.blocked, b.cycle, b.announced = false, b.cycle+1, decimal.Zero
			plan, _ := rules.PlanAt(s.subscriber(customer), time.Unix(0, atNs).UTC())
			s.queueAction(ProvisioningAction{
				ID:     fmt.Sprintf("%s|%s|@grants|%d|resume", customer, m.Name, b.cycle),
				Action: rating.ActionResume, Customer: customer, Meter: m.Name, Plan: plan, Of: "grants",
				At: time.Unix(0, atNs).UTC(),
			})
			s.pending.balancesDirty[balanceKey(customer, m.Name)] = true
		}
	}
}

// expireGrants, at a barrier, settles the balances whose grants expired
// or started since, at the watermark.
func (s *shard) expireGrants(wm int64) {
	present := s.rules.present(wm)
	for len(s.grantTimes) > 0 && s.grantTimes[0].atNs <= present {
		x := heap.Pop(&s.grantTimes).(grantTime)
		b := s.balances[x.key]
		if b == nil {
			continue
		}
		s.expireBalance(b)
		if me, ok := s.grantEntitlement(b.customer, b.meter, x.atNs); ok {
			s.settleBalance(b, me, present, x.atNs)
		}
	}
}

// settleBalance announces, at atNs, what b's usage share at statusNs moved
// across: thresholds newly reached, and, when a top-up, a start or an
// expiry brought it under thresholds announced, a new cycle that
// announces again every threshold reached (after a resume if it is no
// longer throttled or suspended). It marks b dirty when it changes it.
func (s *shard) settleBalance(b *balance, me rating.MeterEntitlement, statusNs, atNs int64) {
	if !s.watchLimits {
		return
	}
	if statusNs > b.clockNs {
		b.clockNs = statusNs
		s.pending.balancesDirty[balanceKey(b.customer, b.meter)] = true
	}
	g, st := b.status(me, b.clockNs)
	top := decimal.Zero
	if n := len(st.Crossed); n > 0 {
		top = st.Crossed[n-1].Percent
	}
	changed := false
	if top.LessThan(b.announced) {
		b.cycle++
		b.announced, changed = decimal.Zero, true
		if b.blocked && st.State != rating.StateThrottled && st.State != rating.StateSuspended {
			b.blocked = false
			s.queueAction(s.balanceAction(b, me, g, st, rating.ActionResume, decimal.Zero, atNs))
		}
	}
	crossed, announced, _ := g.Crossed(st.Used, decimal.Zero, decimal.Zero, b.announced, decimal.Zero)
	for _, c := range crossed {
		if c.Threshold.Action != rating.ActionNotify {
			b.blocked = true
		}
		s.queueAction(s.balanceAction(b, me, g, st, c.Threshold.Action, c.Threshold.Percent, atNs))
		changed = true
	}
	b.announced = announced
	if changed {
		s.pending.balancesDirty[balanceKey(b.customer, b.meter)] = true
	}
}

// balanceAction is an action on b in its cycle: a threshold's (percent)
// or a resume. Its id is customer|meter|@grants|cycle|limit|percent (or
// |resume).
func (s *shard) balanceAction(b *balance, me rating.MeterEntitlement, g *rating.Entitlement, st rating.EntitlementStatus,
	action rating.Action, percent decimal.Decimal, atNs int64) ProvisioningAction {
	what := "resume"
	if action != rating.ActionResume {
		what = "limit|" + percent.String()
	}
	act := ProvisioningAction{
		ID:     fmt.Sprintf("%s|%s|@grants|%d|%s", b.customer, b.meter, b.cycle, what),
		Action: action, Customer: b.customer, Meter: b.meter, Plan: me.Plan, Of: "grants", Threshold: percent,
		Limit: g.Limit, Used: st.Used, Basis: me.Entitlement.Of, At: time.Unix(0, atNs).UTC(),
	}
	if me.Entitlement.Of == rating.LimitGrantAmount {
		act.Currency = me.Currency
	}
	return act
}

// grantTime is when a balance's grant expires or starts.
type grantTime struct {
	atNs int64
	key  string
}

// grantTimes orders grant expiries and starts, soonest first, then by
// balance (so a recovered heap settles balances in the same order).
type grantTimes []grantTime

func (h grantTimes) Len() int { return len(h) }
func (h grantTimes) Less(i, j int) bool {
	return h[i].atNs < h[j].atNs || h[i].atNs == h[j].atNs && h[i].key < h[j].key
}
func (h grantTimes) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *grantTimes) Push(x any)   { *h = append(*h, x.(grantTime)) }
func (h *grantTimes) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// GrantReport is one grant of a balance, as the entitlements API shows it.
type GrantReport struct {
	ID string `json:"id"`
	// Currency is a money grant's (granted and remaining are amounts).
	Currency  string          `json:"currency,omitempty"`
	Start     time.Time       `json:"start"`
	Expires   *time.Time      `json:"expires,omitempty"`
	Granted   decimal.Decimal `json:"granted"`
	Remaining decimal.Decimal `json:"remaining"`
}

// grantReports lists b's grants (none for nil).
func grantReports(b *balance) []GrantReport {
	out := []GrantReport{}
	if b == nil {
		return out
	}
	for _, l := range b.lots {
		r := GrantReport{ID: l.id, Currency: l.currency, Start: time.Unix(0, l.startNs).UTC(), Granted: l.granted, Remaining: l.remaining}
		if l.expiresNs != math.MaxInt64 {
			t := time.Unix(0, l.expiresNs).UTC()
			r.Expires = &t
		}
		out = append(out, r)
	}
	return out
}

// balanceFormat leads an encoded balance: 2, lots carry their source; 3,
// and their currency; 4, and the money drawn per period (drawnCharge).
// Older formats are read (none of them has money grants).
const balanceFormat = 4

// encodeBalance is b's stored value.
func encodeBalance(b *balance) []byte {
	out := []byte{balanceFormat}
	out = binary.AppendUvarint(out, b.cycle)
	out = appendDecimal(out, b.announced)
	blocked := byte(0)
	if b.blocked {
		blocked = 1
	}
	out = append(out, blocked)
	out = appendDecimal(out, b.overage)
	out = binary.AppendVarint(out, b.clockNs)
	out = binary.AppendUvarint(out, uint64(len(b.lots)))
	for _, l := range b.lots {
		out = appendBytes(out, []byte(l.source))
		out = appendBytes(out, []byte(l.id))
		out = binary.AppendVarint(out, l.startNs)
		out = binary.AppendVarint(out, l.expiresNs)
		out = appendDecimal(out, l.granted)
		out = appendDecimal(out, l.remaining)
		out = appendBytes(out, []byte(l.currency))
	}
	out = binary.AppendUvarint(out, uint64(len(b.drawnCharge)))
	for _, start := range slices.Sorted(maps.Keys(b.drawnCharge)) {
		out = binary.AppendVarint(out, start)
		out = appendDecimal(out, b.drawnCharge[start])
	}
	return out
}

// decodeBalance reads a stored balance of key (customer NUL meter).
func decodeBalance(key, v []byte) (*balance, error) {
	customer, meter, ok := strings.Cut(string(key), "\x00")
	if !ok {
		return nil, fmt.Errorf("grant balance key %q has no meter", key)
	}
	r := byteReader{b: v}
	format := r.byte()
	if r.err == nil && (format < 2 || format > balanceFormat) {
		return nil, fmt.Errorf("grant balance of %s/%s: format %d, this version reads 2 to %d", customer, meter, format, balanceFormat)
	}
	b := &balance{customer: customer, meter: meter}
	b.cycle = r.uvarint()
	b.announced = r.decimal()
	b.blocked = r.byte() == 1
	b.overage = r.decimal()
	b.clockNs = r.varint()
	n := r.uvarint()
	if r.err == nil && n > uint64(len(v)) {
		return nil, fmt.Errorf("grant balance of %s/%s: %d grants in %d bytes", customer, meter, n, len(v))
	}
	for range n {
		l := grantLot{source: string(r.bytes()), id: string(r.bytes()), startNs: r.varint(), expiresNs: r.varint()}
		l.granted, l.remaining = r.decimal(), r.decimal()
		if format >= 3 {
			l.currency = string(r.bytes())
		}
		b.lots = append(b.lots, l)
	}
	if format >= 4 {
		for range r.uvarint() {
			if b.drawnCharge == nil {
				b.drawnCharge = map[int64]decimal.Decimal{}
			}
			start := r.varint()
			b.drawnCharge[start] = r.decimal()
			if r.err != nil {
				break
			}
		}
	}
	if r.err != nil {
		return nil, fmt.Errorf("grant balance of %s/%s: %w", customer, meter, r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("grant balance of %s/%s: %d trailing bytes", customer, meter, len(r.b))
	}
	return b, nil
}

// snapshotBalances adds the balances changed since the last barrier to snap.
func (s *shard) snapshotBalances(snap *shardSnapshot) {
	for k := range s.pending.balancesDirty {
		snap.grantPuts = append(snap.grantPuts, state.KV{Key: []byte(k), Value: encodeBalance(s.balances[k])})
	}
	clear(s.pending.balancesDirty)
}

// restoreBalance files a stored balance at recovery, at watermark wm.
func (s *shard) restoreBalance(b *balance, wm int64) {
	k := balanceKey(b.customer, b.meter)
	s.balances[k] = b
	for _, l := range b.lots {
		if l.expiresNs != math.MaxInt64 {
			heap.Push(&s.grantTimes, grantTime{atNs: l.expiresNs, key: k})
		}
		if l.startNs > s.rules.present(wm) {
			heap.Push(&s.grantTimes, grantTime{atNs: l.startNs, key: k})
		}
	}
}
