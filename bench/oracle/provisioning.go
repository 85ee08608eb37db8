package oracle

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Entitlements and the provisioning actions they call for, recomputed
// from the records alone (docs/provisioning.md is the rule): a units
// limit's threshold is announced by the record whose running total in its
// billing period first reaches it above the share announced so far, under
// the plan version pricing the record's window; a subscription event
// checks the periods it falls in under its new plan; a period that reached
// a throttle or suspend is resumed once it closes; every subscription
// event announces its lifecycle action. Amount limits are left out: when
// a charge crosses depends on when windows were emitted.

type oThreshold struct {
	percent int64
	action  string
}

type oEntitlement struct {
	limit      decimal.Decimal
	soft       bool
	thresholds []oThreshold
	allowance  []int64 // notify, in percent of the free allowance
}

// genEntitlements gives two in three meter prices of data and sms a units
// limit near what a customer uses in a billing period (with records every
// meanGap on average), so that some periods cross every threshold and
// others only some.
func (w *oWorld) genEntitlements(rng *rand.Rand, meanGap time.Duration) {
	perPeriod := float64(30*24*time.Hour) / float64(meanGap) / float64(len(w.customers)*len(w.meters))
	for _, id := range []string{"basic", "pro"} {
		for _, p := range w.plans[id] {
			for _, name := range []string{"data", "sms"} {
				if rng.IntN(3) == 0 {
					continue
				}
				mean := perPeriod
				if name == "data" {
					mean *= 450 // values 1..900
				}
				e := &oEntitlement{limit: decimal.NewFromInt(int64(mean*(0.3+rng.Float64())) + 1), soft: rng.IntN(4) == 0}
				for _, t := range []oThreshold{{25, "notify"}, {50, "notify"}, {80, "throttle"}, {100, "suspend"}, {150, "notify"}} {
					if rng.IntN(3) > 0 && (t.percent <= 100 || e.soft) {
						e.thresholds = append(e.thresholds, t)
					}
				}
				if len(e.thresholds) == 0 {
					e.thresholds = []oThreshold{{100, "suspend"}}
					if e.soft {
						e.thresholds[0].action = "notify"
					}
				}
				if pr := p.meters[name]; pr.allowance.IsPositive() && rng.IntN(2) == 0 {
					e.allowance = []int64{50, 100}[rng.IntN(2):]
				}
				p.meters[name].ent = e
			}
		}
	}
}

// yaml renders e as a plan's meter field.
func (e *oEntitlement) yaml() string {
	var ts []string
	for _, t := range e.thresholds {
		ts = append(ts, fmt.Sprintf("{percent: %d, action: %s}", t.percent, t.action))
	}
	s := fmt.Sprintf("        entitlement: {limit: %q, thresholds: [%s]", e.limit.String(), strings.Join(ts, ", "))
	if e.soft {
		s += ", enforcement: soft"
	}
	if len(e.allowance) > 0 {
		s += fmt.Sprintf(", allowanceThresholds: %v", strings.ReplaceAll(fmt.Sprint(e.allowance), " ", ", "))
	}
	return s + "}\n"
}

// Action is a provisioning action as its consumer reads it. A lifecycle
// action's ID is customer|@subscription|at (RFC 3339)|action here: the
// engine's names its event by a hash of its dedup identity.
type Action struct {
	ID, Action string
	Used       decimal.Decimal // crossings: the period's units with the record that crossed
	At         time.Time
	// optional: a resume of a period that its own usage throttled or
	// suspended too; whether it comes depends on where barriers fell
	// (it never comes after that throttle or suspend).
	optional bool
	// blocks names, for a resume, the crossings of its period that must
	// not come before it.
	blocks []string
}

// expectActions is what world announces once the watermark is at
// watermark, by id.
func (w *oWorld) expectActions(watermark time.Time) map[string]Action {
	out := make(map[string]Action)
	type state struct {
		start, end                    time.Time
		units                         decimal.Decimal
		announced, allowanceAnnounced int64
		blocked                       bool
		blocking                      []string // ids of its throttles and suspends
	}
	periods := make(map[oPeriodKey]*state)
	hundred := decimal.NewFromInt(100)
	// check announces what st's units reach under entitlement e and the
	// meter's free allowance, at the time of at.
	check := func(c, meter string, st *state, e *oEntitlement, allowance decimal.Decimal, at time.Time) {
		if e == nil {
			return
		}
		prefix := c + "|" + meter + "|" + st.start.UTC().Format(time.RFC3339) + "|"
		for _, t := range e.thresholds {
			if t.percent > st.announced && !st.units.Mul(hundred).LessThan(e.limit.Mul(decimal.NewFromInt(t.percent))) {
				out[prefix+fmt.Sprintf("limit|%d", t.percent)] = Action{Action: t.action, Used: st.units, At: at}
				if t.action != "notify" {
					st.blocking = append(st.blocking, prefix+fmt.Sprintf("limit|%d", t.percent))
				}
				st.announced = t.percent
				st.blocked = st.blocked || t.action != "notify"
			}
		}
		if !allowance.IsPositive() {
			return
		}
		for _, pct := range e.allowance {
			if pct > st.allowanceAnnounced && !st.units.Mul(hundred).LessThan(allowance.Mul(decimal.NewFromInt(pct))) {
				out[prefix+fmt.Sprintf("allowance|%d", pct)] = Action{Action: "notify", Used: st.units, At: at}
				st.allowanceAnnounced = pct
			}
		}
	}
	seen := make(map[string]bool)
	for _, r := range w.records {
		if seen[r.id] {
			continue
		}
		seen[r.id] = true
		if r.outage != nil {
			continue // SLA events announce nothing
		}
		c := w.customer(r.customer)
		// The records carry their time to the second.
		at := r.at.Truncate(time.Second)
		if r.subPlan != nil {
			action := "update_limits" // the world's events are plan changes and cancellations
			if *r.subPlan == "" {
				action = "deactivate"
			}
			out[r.customer+"|@subscription|"+at.UTC().Format(time.RFC3339)+"|"+action] = Action{Action: action, At: at}
			// The periods it falls in, under the plan it puts in force.
			id, _ := w.planAt(c.id, r.at)
			version := w.version(id, r.at)
			for _, m := range w.meters {
				pStart, _ := c.period(r.at)
				if st := periods[oPeriodKey{c.id, m.name, pStart.UnixNano()}]; st != nil {
					pr := version.meters[m.name]
					check(c.id, m.name, st, pr.ent, pr.allowance, at)
				}
			}
			continue
		}
		m := w.meter(r.meter)
		start, _ := w.window(m, c, r.at)
		pStart, pEnd := c.period(start)
		pk := oPeriodKey{c.id, m.name, pStart.UnixNano()}
		st := periods[pk]
		if st == nil {
			st = &state{start: pStart, end: pEnd, units: decimal.Zero}
			periods[pk] = st
		}
		st.units = st.units.Add(decimal.NewFromInt(r.value))
		id, _ := w.planAt(c.id, start)
		pr := w.version(id, start).meters[m.name]
		check(c.id, m.name, st, pr.ent, pr.allowance, at)
	}
	for pk, st := range periods {
		// Closed at the watermark (grace 0); every customer has a plan
		// in the next period (the default plan at least).
		if st.blocked && !st.end.After(watermark) {
			id := pk.customer + "|" + pk.meter + "|" + st.end.UTC().Format(time.RFC3339) + "|resume"
			a := Action{Action: "resume", At: st.end.UTC()}
			if next := periods[oPeriodKey{pk.customer, pk.meter, st.end.UnixNano()}]; next != nil && next.blocked {
				a.optional, a.blocks = true, next.blocking
			}
			out[id] = a
		}
	}
	return out
}

// CheckActions compares the actions delivered (every delivery, re-deliveries
// included) with the oracle's at the final watermark: the same ids, each
// with its action, a crossing with the units and time of the record that
// crossed, a re-delivery the same as the first. It returns the problems and
// how many actions were owed.
func (w *World) CheckActions(got []Action, watermark time.Time) (problems []string, owed int) {
	want := w.w.expectActions(watermark)
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	first := make(map[string]Action)
	index := make(map[string]int) // of the first delivery
	for i, a := range got {
		if _, ok := index[a.ID]; !ok {
			index[a.ID] = i
		}
		if prev, ok := first[a.ID]; ok {
			if prev.Action != a.Action || !prev.Used.Equal(a.Used) || !prev.At.Equal(a.At) {
				bad("action %s delivered twice, differently: %+v then %+v", a.ID, prev, a)
			}
			continue
		}
		first[a.ID] = a
		x, ok := want[a.ID]
		switch {
		case !ok:
			bad("action %s (%s) delivered, not owed", a.ID, a.Action)
		case x.Action != a.Action:
			bad("action %s is %s, the oracle's %s", a.ID, a.Action, x.Action)
		case !x.Used.Equal(a.Used) || !x.At.Equal(a.At):
			bad("action %s: used %s at %s, the oracle's %s at %s", a.ID, a.Used, a.At, x.Used, x.At)
		}
	}
	var missing []string
	for id, x := range want {
		if _, ok := first[id]; !ok && !x.optional {
			missing = append(missing, id)
		}
		if i, ok := index[id]; ok {
			for _, b := range x.blocks {
				if j, ok := index[b]; ok && j < i {
					bad("resume %s delivered after %s: it undoes that %s", id, b, want[b].Action)
				}
			}
		}
	}
	sort.Strings(missing)
	for _, id := range missing {
		bad("action %s (%s) owed, not delivered", id, want[id].Action)
	}
	return problems, len(want)
}
