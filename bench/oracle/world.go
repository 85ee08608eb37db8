package oracle

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Options shape a generated workload.
type Options struct {
	// Start and Span bound the usage's event time (Span at least 75 days:
	// subscription changes fall up to 60 days in).
	Start time.Time
	Span  time.Duration
	// MeanGap is the mean event-time gap between records.
	MeanGap time.Duration
	// Jitter delays each record's arrival by up to this (keep it under the
	// allowed lateness); LatePercent of records arrive LateBy after their
	// time instead (keep it under the revise horizon: they revise).
	Jitter      time.Duration
	LatePercent int
	LateBy      time.Duration
	// RetryPercent of records are sent twice (a producer retry).
	RetryPercent int
	// CloseAfter, when set, adds one record that far past the end, so the
	// watermark closes every window and settles the periods before it.
	CloseAfter time.Duration
	// NoSLA leaves out the SLA objectives and outages (sla.go).
	NoSLA bool
}

// DefaultOptions is the engine property test's workload: 75 days from
// January 1st 2026, a record every two hours on average, up to 5 minutes
// of jitter, 5% retries.
func DefaultOptions() Options {
	return Options{Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Span: 75 * 24 * time.Hour,
		MeanGap: 2 * time.Hour, Jitter: 5 * time.Minute, RetryPercent: 5}
}

// World is a generated workload: plans, meters, customers, subscriptions
// and records, and what Tally must make of them.
type World struct{ w *oWorld }

// Generate builds the workload of seed.
func Generate(seed uint64, opts Options) *World {
	return &World{genWorld(rand.New(rand.NewPCG(seed, 0x7a11)), opts)}
}

// Meter is a meter as Tally's configuration names it.
type Meter struct {
	Name, Aggregation, Window string
	// Align is UTC or customer.
	Align string
}

// Customer is a customer's billing settings.
type Customer struct {
	ID               string
	Timezone         string
	BillingAnchorDay int
}

// Subscription is a configured subscription (End zero: open-ended).
type Subscription struct {
	Customer, Plan string
	Start, End     time.Time
}

// Record is one message for the usage topic, keyed by customer.
type Record struct {
	Customer string
	Value    []byte
	// Every is set for a record every partition of the topic must get (a
	// shared service's SLA event; Customer is then "").
	Every bool
}

// DefaultPlan is the plan of customers without a subscription.
const DefaultPlan = "basic"

// Meters lists the meters to configure.
func (w *World) Meters() []Meter {
	var out []Meter
	for _, m := range w.w.meters {
		align := "UTC"
		if m.local {
			align = "customer"
		}
		out = append(out, Meter{Name: m.name, Aggregation: m.agg, Window: m.window, Align: align})
	}
	return out
}

// Customers lists the customers' settings.
func (w *World) Customers() []Customer {
	var out []Customer
	for _, c := range w.w.customers {
		out = append(out, Customer{ID: c.id, Timezone: c.zone.String(), BillingAnchorDay: c.anchor})
	}
	return out
}

// Subscriptions lists the configured subscriptions (others come as events
// among the records).
func (w *World) Subscriptions() []Subscription { return append([]Subscription(nil), w.w.configured...) }

// Records lists the messages in the order they are to be produced,
// retries included.
func (w *World) Records() []Record {
	out := make([]Record, len(w.w.records))
	for i, r := range w.w.records {
		out[i] = Record{Customer: r.customer, Value: r.raw, Every: r.service != ""}
	}
	return out
}

// PlansYAML is the plan file.
func (w *World) PlansYAML() string { return w.w.yaml() }

// ConfigYAML is the part of tally.yaml the workload needs: meters,
// customers, subscriptions and the default plan.
func (w *World) ConfigYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "defaultPlan: %s\nmeters:\n", DefaultPlan)
	for _, m := range w.Meters() {
		fmt.Fprintf(&b, "  - {name: %s, aggregation: %s, window: %s, align: %s}\n", m.Name, m.Aggregation, m.Window, m.Align)
	}
	b.WriteString("customers:\n")
	for _, c := range w.Customers() {
		fmt.Fprintf(&b, "  - {id: %s, timezone: %s, billingAnchorDay: %d}\n", c.ID, c.Timezone, c.BillingAnchorDay)
	}
	b.WriteString("subscriptions:\n")
	for _, s := range w.w.configured {
		end := ""
		if !s.End.IsZero() {
			end = ", end: " + s.End.Format(time.RFC3339)
		}
		fmt.Fprintf(&b, "  - {customer: %s, plan: %s, start: %s%s}\n", s.Customer, s.Plan, s.Start.Format(time.RFC3339), end)
	}
	return b.String()
}

// Describe says what was drawn, for logs.
func (w *World) Describe() string {
	return fmt.Sprintf("meters %v, rounding %d places %s, %d records", w.Meters(), w.w.rounding.decimals, w.w.rounding.mode, len(w.w.records))
}

// Row is a rated row as a sink holds its highest revision.
type Row struct {
	Meter, Customer, GroupKey string
	WindowStart, WindowEnd    time.Time
	Quantity                  decimal.Decimal
	Count                     uint64
	Amount                    decimal.Decimal
	Final                     bool
}

// FeeGroup is the group key of fee rows.
const FeeGroup = "@period"

// Report is what Check found.
type Report struct {
	Problems []string
	// What was checked: windows recomputed, periods priced to the cent,
	// fee rows, SLA credits owed.
	Windows, ExactPeriods, FeeRows, Credits int
}

// Check compares rows (the highest revision of each) with the oracle at
// the final watermark:
//
//   - every window's quantity, count and end with a naive recomputation,
//     and every window final;
//   - every billing period's money, to the cent, with the oracle's price of
//     the period's total: always for per-event prices (the plans of a
//     world share one rounding, so window increments add up to the rounded
//     sum of event charges), and for the other prices when one plan version
//     priced all of the period's windows (with two, a window's increment
//     depends on the order windows were charged in, by design);
//   - every fee row (flat fee prorated over subscribed stretches, true-up of
//     the prorated commitment against the usage the rows charged), and that
//     exactly the settled periods the oracle expects have one.
func (w *World) Check(rows []Row, watermark time.Time) Report {
	o := w.w
	var rep Report
	bad := func(format string, args ...any) { rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...)) }
	x := o.expect()
	charged := make(map[oPeriodKey]decimal.Decimal) // the rows' window amounts per period
	fees := make(map[oPeriodKey]Row)
	feeAmounts := make(map[oPeriodKey]decimal.Decimal)
	seen := make(map[oWindowKey]bool)
	for _, r := range rows {
		c := o.customer(r.Customer)
		pStart, _ := c.period(r.WindowStart)
		pk := oPeriodKey{r.Customer, r.Meter, pStart.UnixNano()}
		if r.GroupKey == FeeGroup {
			fees[pk] = r
			feeAmounts[pk] = r.Amount
			continue
		}
		if strings.HasPrefix(r.GroupKey, "@sla:") {
			continue // checkCredits
		}
		charged[pk] = charged[pk].Add(r.Amount)
		wk := oWindowKey{r.Meter, r.Customer, r.GroupKey, r.WindowStart.UnixNano()}
		want := x.windows[wk]
		seen[wk] = true
		switch {
		case want == nil:
			bad("row for a window the oracle has none of: %s %s %q %s", r.Meter, r.Customer, r.GroupKey, r.WindowStart)
		case !r.Quantity.Equal(want.quantity) || r.Count != want.count:
			bad("window %s %s %q %s: quantity %s count %d, recomputed %s and %d", r.Meter, r.Customer, r.GroupKey, r.WindowStart, r.Quantity, r.Count, want.quantity, want.count)
		case !r.WindowEnd.Equal(want.end):
			bad("window %s %s %s ends %s, the oracle's at %s", r.Meter, r.Customer, r.WindowStart, r.WindowEnd, want.end)
		case !r.Final && !want.end.After(watermark):
			bad("window %s %s %s is not final at watermark %s", r.Meter, r.Customer, r.WindowStart, watermark)
		}
	}
	for wk, want := range x.windows {
		if !seen[wk] {
			bad("no row for window %s %s %q %s (quantity %s)", wk.meter, wk.customer, wk.group, time.Unix(0, wk.start).UTC(), want.quantity)
		}
	}
	rep.Windows = len(x.windows)

	for pk, p := range x.periods {
		m := o.meter(pk.meter)
		var want decimal.Decimal
		switch {
		case m.perEvent:
			want = o.rounding.round(p.money)
		case len(p.versions) == 1:
			for v := range p.versions {
				want = o.rounding.round(v.meters[m.name].charge(p.quantity))
			}
		default:
			continue
		}
		rep.ExactPeriods++
		if got := charged[pk]; !got.Equal(want) {
			bad("period %s %s from %s: windows charged %s, the oracle prices the period %s (quantity %s)", pk.customer, pk.meter, p.start, got, want, p.quantity)
		}
	}

	for _, c := range o.customers {
		first, ok := time.Time{}, false
		for _, ch := range o.timeline[c.id] {
			if ch.plan != "" && (!ok || ch.at.Before(first)) {
				first, ok = ch.at, true
			}
		}
		if !ok {
			continue
		}
		for pStart, pEnd := c.period(first); !pStart.After(watermark); pStart, pEnd = c.period(pEnd) {
			for _, m := range o.meters {
				pk := oPeriodKey{c.id, m.name, pStart.UnixNano()}
				want, owes := o.fee(c, m.name, pStart, pEnd, charged[pk])
				settled := !o.settles(m, c, pEnd).After(watermark)
				row, got := fees[pk]
				delete(fees, pk)
				switch {
				case owes && settled && !got:
					bad("no fee row for %s %s period %s..%s (owes %s)", c.id, m.name, pStart, pEnd, want)
				case got && !(owes && settled) && !row.Amount.IsZero(): // a fee revoked to 0 owes nothing either
					bad("fee row %s for %s %s period %s: the oracle expects none (owes %v, settled %v)", row.Amount, c.id, m.name, pStart, owes, settled)
				case got && !row.Amount.Equal(want):
					bad("fee row for %s %s period %s..%s: %s, the oracle says %s (usage charged %s)", c.id, m.name, pStart, pEnd, row.Amount, want, charged[pk])
				}
				if got {
					rep.FeeRows++
				}
			}
		}
	}
	for pk, row := range fees {
		if row.Amount.IsZero() {
			continue // revoked
		}
		bad("fee row %s for %s %s period from %s, of a customer the oracle expects none of", row.Amount, pk.customer, pk.meter, time.Unix(0, pk.start))
	}
	credits, owed := o.checkCredits(rows, charged, feeAmounts, watermark)
	rep.Problems = append(rep.Problems, credits...)
	rep.Credits = owed
	if rep.ExactPeriods == 0 || rep.FeeRows == 0 || rep.Windows == 0 {
		bad("the oracle checked nothing: %d periods priced, %d fee rows, %d windows", rep.ExactPeriods, rep.FeeRows, rep.Windows)
	}
	return rep
}
