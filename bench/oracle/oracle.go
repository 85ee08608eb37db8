// Package oracle recomputes what Tally must produce for a generated
// workload, sharing nothing with the engine or package rating: its own plan
// model (generated here, then rendered to YAML for Tally), its own tier
// walk, package blocks, allowance, per-N-units division, bands,
// destinations, per-event bounds, rounding modes, window and billing-period
// arithmetic, subscription timelines and fee proration. Tally reads the YAML
// through its own parser; the oracle reads the structs the YAML was
// rendered from. The engine's property test and the crash harness use it.
package oracle

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// --- the oracle's plan model -------------------------------------------

type oTier struct {
	upTo         *decimal.Decimal
	price, fixed decimal.Decimal
}

type oBand struct {
	name     string
	days     []time.Weekday
	from, to int // minutes of the day, [from, to)
	price    decimal.Decimal
}

type oDest struct {
	prefix, name string
	price        decimal.Decimal
	eventFee     *decimal.Decimal
}

type oPrice struct {
	model                      string // per_unit package graduated volume
	unit                       decimal.Decimal
	per                        *decimal.Decimal
	pkgSize, pkgPrice          decimal.Decimal
	tiers                      []oTier
	allowance, commit, flatFee decimal.Decimal
	// per event
	eventFee   decimal.Decimal
	minE, maxE *decimal.Decimal
	bands      []oBand
	dests      []oDest
	// ent is the meter's entitlement (provisioning.go); nil: none.
	ent *oEntitlement
}

func (p *oPrice) perEvent() bool {
	return !p.eventFee.IsZero() || p.minE != nil || p.maxE != nil || len(p.bands) > 0 || len(p.dests) > 0
}

type oPlan struct {
	id        string
	validFrom time.Time
	bandZone  *time.Location
	meters    map[string]*oPrice
	sla       *oSLA // the availability objective (sla.go); nil: none
}

// oRounding is every plan's rounding in one run (plans of a run share it, so
// that per-event sums telescope across plan changes; see the test's doc).
type oRounding struct {
	decimals int32
	mode     string
}

func (r oRounding) round(d decimal.Decimal) decimal.Decimal {
	switch r.mode {
	case "half_even":
		return d.RoundBank(r.decimals)
	case "up":
		return d.RoundUp(r.decimals)
	case "down":
		return d.RoundDown(r.decimals)
	default:
		return d.Round(r.decimals)
	}
}

// times returns units x price / per, to 30 places when divided.
func (p *oPrice) times(units, price decimal.Decimal) decimal.Decimal {
	if p.per == nil {
		return units.Mul(price)
	}
	return units.Mul(price).DivRound(*p.per, 30)
}

// charge is the unrounded usage charge of a period-to-date quantity.
func (p *oPrice) charge(q decimal.Decimal) decimal.Decimal {
	billable := q
	if p.allowance.IsPositive() {
		billable = q.Sub(decimal.Min(decimal.Max(q, decimal.Zero), p.allowance))
	}
	switch p.model {
	case "per_unit":
		return p.times(billable, p.unit)
	case "package":
		if !billable.IsPositive() {
			return decimal.Zero
		}
		blocks := billable.Div(p.pkgSize).Ceil()
		return blocks.Mul(p.pkgPrice)
	case "graduated":
		total, lower := decimal.Zero, decimal.Zero
		for _, t := range p.tiers {
			if billable.LessThanOrEqual(lower) {
				break
			}
			top := billable
			if t.upTo != nil && t.upTo.LessThan(top) {
				top = *t.upTo
			}
			total = total.Add(p.times(top.Sub(lower), t.price)).Add(t.fixed)
			if t.upTo != nil {
				lower = *t.upTo
			}
		}
		return total
	case "volume":
		if !billable.IsPositive() {
			return decimal.Zero
		}
		for _, t := range p.tiers {
			if t.upTo == nil || billable.LessThanOrEqual(*t.upTo) { // upTo is inclusive
				return p.times(billable, t.price).Add(t.fixed)
			}
		}
	}
	panic("oracle: unknown model " + p.model)
}

// eventCharge is one event's charge and the rate it is priced at.
func (p *oPrice) eventCharge(units decimal.Decimal, at time.Time, called string, zone *time.Location) (decimal.Decimal, string) {
	rate, price, fee := "", p.unit, p.eventFee
	switch {
	case len(p.bands) > 0:
		rate = "standard"
		local := at.In(zone)
		minute := local.Hour()*60 + local.Minute()
		for _, b := range p.bands {
			day := false
			for _, d := range b.days {
				day = day || d == local.Weekday()
			}
			if day && minute >= b.from && minute < b.to {
				rate, price = b.name, b.price
				break
			}
		}
	case len(p.dests) > 0:
		rate = "other"
		best := -1
		for i, d := range p.dests {
			if strings.HasPrefix(called, d.prefix) && (best < 0 || len(d.prefix) > len(p.dests[best].prefix)) {
				best = i
			}
		}
		if best >= 0 {
			rate, price = p.dests[best].name, p.dests[best].price
			if p.dests[best].eventFee != nil {
				fee = *p.dests[best].eventFee
			}
		}
	}
	amount := p.times(units, price).Add(fee)
	if p.minE != nil && amount.LessThan(*p.minE) {
		amount = *p.minE
	}
	if p.maxE != nil && amount.GreaterThan(*p.maxE) {
		amount = *p.maxE
	}
	return amount, rate
}

// --- generation -----------------------------------------------------------

type oMeter struct {
	name, agg, window string
	local             bool // customer-aligned (DAY and MONTH only)
	perEvent          bool
}

type oCustomer struct {
	id     string
	zone   *time.Location
	anchor int
}

type oChange struct {
	at   time.Time
	plan string // "" ends the subscription
}

type oRecord struct {
	id, customer, meter string
	at                  time.Time
	value               int64
	called              string
	subPlan             *string  // a subscription event when set
	outage              *oOutage // an sla.outage event when set (sla.go)
	service             string   // the outage's shared service (customer is then "")
	raw                 []byte
}

// placedRecord is a record and when it arrives.
type placedRecord struct {
	rec   oRecord
	place time.Time
}

type oWorld struct {
	rounding  oRounding
	plans     map[string][]*oPlan // by id, versions by validFrom
	meters    []oMeter
	customers []oCustomer
	// configured subscriptions, and each customer's whole timeline
	configured []Subscription
	timeline   map[string][]oChange
	records    []oRecord // in placement order, duplicates included
	// outages by customer, and of the shared service (sla.go)
	outages        map[string][]*oOutage
	serviceOutages []*oOutage
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }
func decp(s string) *decimal.Decimal {
	d := dec(s)
	return &d
}

var oracleZones = []string{"UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Paris"}

func genWorld(rng *rand.Rand, opts Options) *oWorld {
	w := &oWorld{plans: make(map[string][]*oPlan), timeline: make(map[string][]oChange), outages: make(map[string][]*oOutage)}
	w.rounding = oRounding{decimals: int32(rng.IntN(5)), mode: []string{"half_up", "half_even", "up", "down"}[rng.IntN(4)]}
	windows := []string{"HOUR", "5m", "DAY", "MONTH"}
	pickWindow := func() (string, bool) {
		win := windows[rng.IntN(len(windows))]
		local := (win == "DAY" || win == "MONTH") && rng.IntN(2) == 0
		return win, local
	}
	win, local := pickWindow()
	w.meters = append(w.meters, oMeter{name: "data", agg: "SUM", window: win, local: local})
	win, local = pickWindow()
	w.meters = append(w.meters, oMeter{name: "sms", agg: "COUNT", window: win, local: local})
	win, local = pickWindow()
	w.meters = append(w.meters, oMeter{name: "calls", agg: "SUM", window: win, local: local, perEvent: true})

	base := opts.Start
	for _, id := range []string{"basic", "pro"} {
		versions := 1 + rng.IntN(2)
		for v := range versions {
			from := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
			if v > 0 {
				from = base.Add(time.Duration(20+rng.IntN(40)) * 24 * time.Hour).Add(time.Duration(rng.IntN(24)) * time.Hour)
			}
			w.plans[id] = append(w.plans[id], genPlan(rng, id, from))
		}
	}
	for i := range 6 {
		zone, _ := time.LoadLocation(oracleZones[rng.IntN(len(oracleZones))])
		w.customers = append(w.customers, oCustomer{id: fmt.Sprintf("c%d", i), zone: zone, anchor: []int{1, 1, 10, 15, 28}[rng.IntN(5)]})
	}
	// c0, c1: configured subscriptions (c1's ends, then pro); c2, c3:
	// subscription events with a mid-period change; c4, c5: default plan.
	day := func(d int) time.Time {
		return base.Add(time.Duration(d)*24*time.Hour + time.Duration(rng.IntN(24))*time.Hour)
	}
	w.configured = []Subscription{{Customer: "c0", Plan: "basic", Start: day(-10)}}
	w.timeline["c0"] = []oChange{{at: w.configured[0].Start, plan: "basic"}}
	// c1 leaves pro and, an hour later, joins basic: in between it has no
	// subscription (the default plan prices its usage, no fee accrues).
	c1start, c1switch := day(3), day(25+rng.IntN(20))
	w.configured = append(w.configured,
		Subscription{Customer: "c1", Plan: "pro", Start: c1start, End: c1switch},
		Subscription{Customer: "c1", Plan: "basic", Start: c1switch.Add(time.Hour)})
	w.timeline["c1"] = []oChange{{at: c1start, plan: "pro"}, {at: c1switch, plan: ""}, {at: c1switch.Add(time.Hour), plan: "basic"}}

	// Usage, about 75 days, with subscription events placed at their time.
	type placed = placedRecord
	var all []placed
	end := base.Add(opts.Span)
	subEvent := func(customer string, at time.Time, plan string, n int) {
		p := plan
		all = append(all, placed{rec: oRecord{id: fmt.Sprintf("sub-%s-%d", customer, n), customer: customer, at: at, subPlan: &p}, place: at})
		w.timeline[customer] = append(w.timeline[customer], oChange{at: at, plan: plan})
	}
	subEvent("c2", day(2), "basic", 1)
	subEvent("c2", day(30+rng.IntN(20)), "pro", 2)
	subEvent("c3", day(12), "pro", 1)
	subEvent("c3", day(40+rng.IntN(20)), "", 2) // cancelled
	n := 0
	for at := base.Add(time.Duration(rng.IntN(3600)) * time.Second); at.Before(end); at = at.Add(time.Duration(1+rng.Int64N(int64(2*opts.MeanGap))) * time.Nanosecond) {
		n++
		m := w.meters[rng.IntN(len(w.meters))]
		c := w.customers[rng.IntN(len(w.customers))]
		r := oRecord{id: fmt.Sprintf("u%d", n), customer: c.id, meter: m.name, at: at, value: int64(1 + rng.IntN(900))}
		if m.agg == "COUNT" {
			r.value = 1
		}
		if m.name == "calls" {
			r.called = []string{"44", "4420", "447", "1", "33"}[rng.IntN(5)] + strconv.Itoa(1000000+rng.IntN(8999999))
		}
		// Records arrive up to Jitter after their time (never late when the
		// allowed lateness is longer); LatePercent of them LateBy after.
		delay := time.Duration(rng.Int64N(int64(opts.Jitter) + 1))
		if opts.LatePercent > 0 && rng.IntN(100) < opts.LatePercent {
			delay = opts.LateBy
		}
		all = append(all, placed{rec: r, place: at.Add(delay)})
	}
	slaRng := rand.New(rand.NewPCG(rng.Uint64(), 13))
	if !opts.NoSLA {
		all = append(all, w.genSLA(slaRng, base, end, opts.Jitter)...)
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].place.Before(all[j].place) })
	for _, p := range all {
		p.rec.raw = p.rec.render()
		w.records = append(w.records, p.rec)
		if rng.IntN(100) < opts.RetryPercent { // a producer retry, soon after
			retry := p.rec
			if retry.subPlan == nil && retry.outage == nil && rng.IntN(2) == 0 {
				// Re-stamped with the time of the retry: still a duplicate.
				retry.at = retry.at.Add(time.Duration(1+rng.IntN(120)) * time.Second)
				retry.raw = retry.render()
			}
			w.records = append(w.records, retry)
		}
	}
	if opts.CloseAfter > 0 {
		// One last record, far ahead, moves the watermark past the end of
		// every window and the settle of every period before it.
		tick := oRecord{id: "tick", customer: w.customers[len(w.customers)-1].id, meter: "data", at: end.Add(opts.CloseAfter), value: 1}
		tick.raw = tick.render()
		w.records = append(w.records, tick)
	}
	for _, tl := range w.timeline {
		sort.SliceStable(tl, func(i, j int) bool { return tl[i].at.Before(tl[j].at) })
	}
	// Last, from a stream of its own, so that the rest of a seed's world
	// is what it was before entitlements.
	w.genEntitlements(rand.New(rand.NewPCG(rng.Uint64(), 11)), opts.MeanGap)
	return w
}

func genPlan(rng *rand.Rand, id string, from time.Time) *oPlan {
	p := &oPlan{id: id, validFrom: from, meters: make(map[string]*oPrice)}
	zone, _ := time.LoadLocation(oracleZones[rng.IntN(len(oracleZones))])
	p.bandZone = zone
	money := func(max int) decimal.Decimal { return decimal.New(int64(rng.IntN(max)), -3) } // 0.000..max/1000
	usage := func() *oPrice {
		pr := &oPrice{}
		switch rng.IntN(4) {
		case 0:
			pr.model, pr.unit = "per_unit", money(50)
			if rng.IntN(2) == 0 {
				pr.per = decp([]string{"60", "1024", "7"}[rng.IntN(3)])
			}
		case 1:
			pr.model, pr.pkgSize, pr.pkgPrice = "package", decimal.NewFromInt(int64(10+rng.IntN(500))), money(5000)
		case 2, 3:
			pr.model = []string{"graduated", "volume"}[rng.IntN(2)]
			upper := int64(0)
			for range 1 + rng.IntN(3) {
				upper += int64(1 + rng.IntN(3000))
				u := decimal.NewFromInt(upper)
				pr.tiers = append(pr.tiers, oTier{upTo: &u, price: money(30), fixed: money(2000).Mul(decimal.NewFromInt(int64(rng.IntN(2))))})
			}
			pr.tiers = append(pr.tiers, oTier{price: money(20)})
			if rng.IntN(3) == 0 {
				pr.per = decp("60")
			}
		}
		if rng.IntN(2) == 0 {
			pr.allowance = decimal.NewFromInt(int64(rng.IntN(2000)))
		}
		if rng.IntN(2) == 0 {
			pr.flatFee = money(20000)
		}
		if rng.IntN(3) == 0 {
			pr.commit = money(30000)
		}
		return pr
	}
	p.meters["data"] = usage()
	p.meters["sms"] = usage()
	calls := &oPrice{model: "per_unit", unit: money(20), eventFee: money(100)}
	if rng.IntN(2) == 0 {
		calls.per = decp("60")
	}
	if rng.IntN(2) == 0 {
		calls.bands = []oBand{
			{name: "weekend", days: []time.Weekday{time.Saturday, time.Sunday}, from: 0, to: 1440, price: money(10)},
			{name: "peak", days: []time.Weekday{time.Monday, time.Tuesday, time.Wednesday, time.Thursday, time.Friday}, from: 8 * 60, to: 18 * 60, price: money(40)},
		}
	} else {
		calls.dests = []oDest{{prefix: "44", name: "UK", price: money(20)}, {prefix: "4420", name: "UK London", price: money(15)},
			{prefix: "447", name: "UK Mobile", price: money(60), eventFee: decp("0.05")}, {prefix: "1", name: "NA", price: money(10)}}
	}
	if rng.IntN(2) == 0 {
		calls.minE = decp("0.01")
	}
	if rng.IntN(2) == 0 {
		calls.maxE = decp("0.50")
	}
	if rng.IntN(2) == 0 {
		calls.flatFee = money(10000)
	}
	if rng.IntN(3) == 0 {
		calls.commit = money(20000)
	}
	p.meters["calls"] = calls
	return p
}

func (r oRecord) render() []byte {
	if r.outage != nil {
		return renderOutage(r)
	}
	if r.subPlan != nil {
		kind := "subscription.plan_changed"
		if *r.subPlan == "" {
			return []byte(fmt.Sprintf(`{"type":"subscription.cancelled","id":%q,"customer":%q,"time":%q}`, r.id, r.customer, r.at.Format(time.RFC3339)))
		}
		return []byte(fmt.Sprintf(`{"type":%q,"id":%q,"customer":%q,"plan":%q,"time":%q}`, kind, r.id, r.customer, *r.subPlan, r.at.Format(time.RFC3339)))
	}
	dims := ""
	if r.called != "" {
		dims = fmt.Sprintf(`,"dims":{"called":%q}`, r.called)
	}
	value := ""
	if r.meter != "sms" {
		value = fmt.Sprintf(`,"value":%d`, r.value)
	}
	return []byte(fmt.Sprintf(`{"id":%q,"customer":%q,"meter":%q,"time":%q%s%s}`, r.id, r.customer, r.meter, r.at.Format(time.RFC3339), value, dims))
}

// yaml renders the plans as the engine reads them.
func (w *oWorld) yaml() string {
	var b strings.Builder
	b.WriteString("plans:\n")
	d := func(x decimal.Decimal) string { return strconv.Quote(x.String()) }
	for _, id := range []string{"basic", "pro"} {
		for _, p := range w.plans[id] {
			fmt.Fprintf(&b, "  - id: %s\n    validFrom: %s\n    currency: EUR\n    timezone: %s\n    rounding: {decimals: %d, mode: %s}\n    meters:\n",
				id, p.validFrom.Format(time.RFC3339), p.bandZone, w.rounding.decimals, w.rounding.mode)
			for _, name := range []string{"calls", "data", "sms"} {
				pr := p.meters[name]
				fmt.Fprintf(&b, "      %s:\n        model: %s\n", name, pr.model)
				switch pr.model {
				case "per_unit":
					fmt.Fprintf(&b, "        unitPrice: %s\n", d(pr.unit))
				case "package":
					fmt.Fprintf(&b, "        packageSize: %s\n        packagePrice: %s\n", d(pr.pkgSize), d(pr.pkgPrice))
				default:
					b.WriteString("        tiers:\n")
					for _, t := range pr.tiers {
						if t.upTo != nil {
							fmt.Fprintf(&b, "          - {upTo: %s, unitPrice: %s, flatFee: %s}\n", d(*t.upTo), d(t.price), d(t.fixed))
						} else {
							fmt.Fprintf(&b, "          - {unitPrice: %s, flatFee: %s}\n", d(t.price), d(t.fixed))
						}
					}
				}
				if pr.per != nil {
					fmt.Fprintf(&b, "        per: %s\n", d(*pr.per))
				}
				for field, v := range map[string]decimal.Decimal{"freeAllowance": pr.allowance, "minimumCommitment": pr.commit, "flatFee": pr.flatFee, "eventFee": pr.eventFee} {
					if !v.IsZero() {
						fmt.Fprintf(&b, "        %s: %s\n", field, d(v))
					}
				}
				if pr.ent != nil {
					b.WriteString(pr.ent.yaml())
				}
				if pr.minE != nil {
					fmt.Fprintf(&b, "        minPerEvent: %s\n", d(*pr.minE))
				}
				if pr.maxE != nil {
					fmt.Fprintf(&b, "        maxPerEvent: %s\n", d(*pr.maxE))
				}
				if len(pr.bands) > 0 {
					b.WriteString("        bands:\n")
					for _, band := range pr.bands {
						var days []string
						for _, day := range band.days {
							days = append(days, strings.ToLower(day.String()[:3]))
						}
						fmt.Fprintf(&b, "          - {name: %s, days: [%s], from: \"%02d:%02d\", to: \"%02d:%02d\", unitPrice: %s}\n",
							band.name, strings.Join(days, ", "), band.from/60, band.from%60, band.to/60, band.to%60, d(band.price))
					}
				}
				if len(pr.dests) > 0 {
					b.WriteString("        destinations:\n          dimension: called\n          prefixes:\n")
					for _, r := range pr.dests {
						fee := ""
						if r.eventFee != nil {
							fee = ", eventFee: " + d(*r.eventFee)
						}
						fmt.Fprintf(&b, "            - {prefix: %q, name: %s, unitPrice: %s%s}\n", r.prefix, r.name, d(r.price), fee)
					}
				}
			}
			if p.sla != nil {
				b.WriteString(p.sla.yaml())
			}
		}
	}
	return b.String()
}

// --- the oracle's time arithmetic -----------------------------------------

func (w *oWorld) customer(id string) oCustomer {
	for _, c := range w.customers {
		if c.id == id {
			return c
		}
	}
	panic("oracle: no customer " + id)
}

func (w *oWorld) meter(name string) oMeter {
	for _, m := range w.meters {
		if m.name == name {
			return m
		}
	}
	panic("oracle: no meter " + name)
}

// window is the window of m holding t for customer c.
func (w *oWorld) window(m oMeter, c oCustomer, t time.Time) (start, end time.Time) {
	loc := time.UTC
	if m.local {
		loc = c.zone
	}
	l := t.In(loc)
	switch m.window {
	case "MONTH":
		start = time.Date(l.Year(), l.Month(), 1, 0, 0, 0, 0, loc)
		return start, start.AddDate(0, 1, 0)
	case "DAY":
		start = time.Date(l.Year(), l.Month(), l.Day(), 0, 0, 0, 0, loc)
		return start, start.AddDate(0, 0, 1)
	case "HOUR":
		return t.Truncate(time.Hour), t.Truncate(time.Hour).Add(time.Hour)
	case "5m":
		return t.Truncate(5 * time.Minute), t.Truncate(5 * time.Minute).Add(5 * time.Minute)
	}
	panic("oracle: window " + m.window)
}

// period is customer c's billing period holding t.
func (c oCustomer) period(t time.Time) (start, end time.Time) {
	l := t.In(c.zone)
	start = time.Date(l.Year(), l.Month(), c.anchor, 0, 0, 0, 0, c.zone)
	if l.Day() < c.anchor {
		start = time.Date(l.Year(), l.Month()-1, c.anchor, 0, 0, 0, 0, c.zone)
	}
	return start, start.AddDate(0, 1, 0)
}

// planAt is the plan id pricing customer's usage at t ("basic", the default
// plan, when it has no subscription then) and whether it is subscribed.
func (w *oWorld) planAt(customer string, t time.Time) (string, bool) {
	plan := ""
	for _, ch := range w.timeline[customer] {
		if !ch.at.After(t) {
			plan = ch.plan
		}
	}
	if plan == "" {
		return "basic", false
	}
	return plan, true
}

// version is plan id's version in force at t.
func (w *oWorld) version(id string, t time.Time) *oPlan {
	var in *oPlan
	for _, v := range w.plans[id] {
		if !v.validFrom.After(t) && (in == nil || v.validFrom.After(in.validFrom)) {
			in = v
		}
	}
	return in
}

// --- what the oracle expects ----------------------------------------------

type oWindowKey struct {
	meter, customer, group string
	start                  int64
}

type oWindow struct {
	end      time.Time
	quantity decimal.Decimal
	count    uint64
}

type oPeriodKey struct {
	customer, meter string
	start           int64
}

type oPeriod struct {
	start, end time.Time
	quantity   decimal.Decimal
	money      decimal.Decimal // per-event meters: the sum of event charges
	versions   map[*oPlan]bool // the versions pricing its windows
}

type oExpect struct {
	windows map[oWindowKey]*oWindow
	periods map[oPeriodKey]*oPeriod
}

func (w *oWorld) expect() *oExpect {
	x := &oExpect{windows: make(map[oWindowKey]*oWindow), periods: make(map[oPeriodKey]*oPeriod)}
	seen := make(map[string]bool)
	for _, r := range w.records {
		if r.subPlan != nil || r.outage != nil || seen[r.id] {
			continue
		}
		seen[r.id] = true
		m, c := w.meter(r.meter), w.customer(r.customer)
		start, end := w.window(m, c, r.at)
		pStart, pEnd := c.period(start)
		id, _ := w.planAt(c.id, start)
		version := w.version(id, start)
		price := version.meters[m.name]
		units := decimal.NewFromInt(r.value)
		group := ""
		pk := oPeriodKey{c.id, m.name, pStart.UnixNano()}
		p := x.periods[pk]
		if p == nil {
			p = &oPeriod{start: pStart, end: pEnd, quantity: decimal.Zero, money: decimal.Zero, versions: make(map[*oPlan]bool)}
			x.periods[pk] = p
		}
		p.versions[version] = true
		if price.perEvent() {
			amount, rate := price.eventCharge(units, r.at, r.called, version.bandZone)
			group = "rate=" + rate
			p.money = p.money.Add(amount)
		}
		p.quantity = p.quantity.Add(units)
		wk := oWindowKey{m.name, c.id, group, start.UnixNano()}
		win := x.windows[wk]
		if win == nil {
			win = &oWindow{end: end, quantity: decimal.Zero}
			x.windows[wk] = win
		}
		win.quantity = win.quantity.Add(units)
		win.count++
	}
	return x
}

// settles is when customer c's period ending at end settles for meter m:
// the end of the last window starting in it.
func (w *oWorld) settles(m oMeter, c oCustomer, end time.Time) time.Time {
	_, last := w.window(m, c, end.Add(-time.Nanosecond))
	if last.After(end) {
		return last
	}
	return end
}

// fee is the fee row customer c owes for meter in the period [start, end),
// given the usage charged in it; ok is false when it owes none.
func (w *oWorld) fee(c oCustomer, meter string, start, end time.Time, usageCharged decimal.Decimal) (decimal.Decimal, bool) {
	total := decimal.NewFromInt(int64(end.Sub(start)))
	flat, commit := decimal.Zero, decimal.Zero
	found := false
	// Subscribed stretches: between changes, each priced by the version in
	// force at the stretch's start.
	cuts := []time.Time{start}
	for _, ch := range w.timeline[c.id] {
		if ch.at.After(start) && ch.at.Before(end) {
			cuts = append(cuts, ch.at)
		}
	}
	cuts = append(cuts, end)
	for i := 0; i+1 < len(cuts); i++ {
		id, subscribed := w.planAt(c.id, cuts[i])
		if !subscribed || !cuts[i+1].After(cuts[i]) {
			continue
		}
		v := w.version(id, cuts[i])
		price := v.meters[meter]
		if price.flatFee.IsZero() && price.commit.IsZero() {
			continue
		}
		found = true
		share := decimal.NewFromInt(int64(cuts[i+1].Sub(cuts[i]))).Div(total)
		flat = flat.Add(price.flatFee.Mul(share))
		commit = commit.Add(price.commit.Mul(share))
	}
	if !found {
		return decimal.Zero, false
	}
	amount := w.rounding.round(flat)
	if shortfall := w.rounding.round(commit).Sub(usageCharged); shortfall.IsPositive() {
		amount = amount.Add(shortfall)
	}
	return amount, true
}
