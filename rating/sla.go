package rating

import (
	"fmt"
	"time"

	"github.com/shopspring/decimal"
)

// Objective is a service-level objective of a plan: what is measured over
// each billing period, the target, and the credits a breach earns. In a
// plan:
//
//	sla:
//	  - name: uptime
//	    kind: availability        # % of the period outside outages (sla.outage events)
//	    target: "99.9"
//	    credits:                  # the highest credit whose bound the measurement passes
//	      - {below: "99.9", credit: "10"}   # % of the period's charge of creditOn
//	      - {below: "99.0", credit: "25"}
//	    creditOn: [voice_seconds] # default: every meter the plan prices (usage and period fees)
//	  - name: fast
//	    kind: latency             # the percentile of sla.probe latencies, in ms
//	    percentile: "99"
//	    target: "200"
//	    credits: [{above: "200", credit: "5"}, {above: "500", credit: "15"}]
//	  - name: errors
//	    kind: error_rate          # % of sla.probe results not ok
//	    target: "1"
//	    credits: [{above: "1", credit: "5"}]
//	  - name: support
//	    kind: resolution          # % of the issues opened in the period resolved within `within`
//	    within: 4h
//	    target: "95"
//	    credits: [{below: "95", credit: "5"}]
type Objective struct {
	Name string        `yaml:"name" json:"name"`
	Kind ObjectiveKind `yaml:"kind" json:"kind"`
	// Target is met at or above it (availability, resolution: percent) or
	// at or below it (latency: ms; error_rate: percent).
	Target decimal.Decimal `yaml:"target" json:"target"`
	// Percentile is the latency percentile measured (e.g. 95, 99): the
	// nearest-rank value of the period's probe latencies.
	Percentile decimal.Decimal `yaml:"percentile" json:"percentile,omitzero"`
	// Within is how soon an issue must be resolved (resolution).
	Within Duration `yaml:"within" json:"within,omitzero"`
	// Window is what is measured at a time: the billing period (period,
	// the default), or each day of it (day, the customer's local days):
	// the period then counts its worst day.
	Window  string       `yaml:"window" json:"window,omitempty"`
	Credits []CreditStep `yaml:"credits" json:"credits"`
	// CreditOn are the meters whose period charge (usage and period fee)
	// the credits are a share of; default: every meter the plan prices.
	CreditOn []string `yaml:"creditOn" json:"creditOn,omitempty"`
	// Service, when set, names a shared service whose probes and outages
	// (SLA events naming the service instead of a customer) count for
	// every customer on the plan, with the customer's own.
	Service string `yaml:"service" json:"service,omitempty"`
}

// ObjectiveKind is what an objective measures.
type ObjectiveKind string

const (
	Availability ObjectiveKind = "availability"
	Latency      ObjectiveKind = "latency"
	ErrorRate    ObjectiveKind = "error_rate"
	Resolution   ObjectiveKind = "resolution"
)

// HigherIsBetter reports whether the objective is met at or above its
// target (a percent of good), rather than at or below (a cost).
func (k ObjectiveKind) HigherIsBetter() bool { return k == Availability || k == Resolution }

// CreditStep is one step of a credit schedule: below (availability,
// resolution) or above (latency, error_rate) Bound, Credit percent of the
// period's charge is credited.
type CreditStep struct {
	Below  *decimal.Decimal `yaml:"below" json:"below,omitempty"`
	Above  *decimal.Decimal `yaml:"above" json:"above,omitempty"`
	Credit decimal.Decimal  `yaml:"credit" json:"credit"`
}

// Duration is a time.Duration read from YAML text such as 4h.
type Duration struct{ time.Duration }

// UnmarshalText reads a duration such as 90m or 4h.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 4h or 90m", b)
	}
	d.Duration = v
	return nil
}

// MarshalText writes d as time.Duration does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// IsZero reports whether d is zero (omitzero).
func (d Duration) IsZero() bool { return d.Duration == 0 }

// bound is a step's bound, whichever side it is on.
func (c CreditStep) bound() decimal.Decimal {
	if c.Below != nil {
		return *c.Below
	}
	return *c.Above
}

var hundred = decimal.NewFromInt(100)

// validateSLA checks the plan's objectives; where names the plan.
func (p *Plan) validateSLA(where string) error {
	seen := map[string]bool{}
	for i := range p.SLA {
		o := &p.SLA[i]
		at := fmt.Sprintf("%s: sla[%d]", where, i)
		if o.Name == "" {
			return fmt.Errorf("%s.name: missing; name the objective (it names its credit rows, @sla:<name>)", at)
		}
		if seen[o.Name] {
			return fmt.Errorf("%s.name: %q appears twice", at, o.Name)
		}
		for _, c := range o.Name {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
				return fmt.Errorf("%s.name: %q has %q; use letters, digits, _ - and . (it names credit rows, @sla:<name>)", at, o.Name, c)
			}
		}
		seen[o.Name] = true
		at = fmt.Sprintf("%s: sla %s", where, o.Name)
		switch o.Kind {
		case Availability, ErrorRate, Resolution:
			if o.Target.IsNegative() || o.Target.GreaterThan(hundred) {
				return fmt.Errorf("%s.target: %s is outside 0..100 (a percent)", at, o.Target)
			}
		case Latency:
			if !o.Target.IsPositive() {
				return fmt.Errorf("%s.target: %s must be positive (milliseconds)", at, o.Target)
			}
			if !o.Percentile.IsPositive() || o.Percentile.GreaterThan(hundred) {
				return fmt.Errorf("%s.percentile: %s is outside (0, 100]; write p99 as 99", at, o.Percentile)
			}
		default:
			return fmt.Errorf("%s.kind: %q is none of availability, latency, error_rate, resolution", at, o.Kind)
		}
		if o.Kind != Latency && !o.Percentile.IsZero() {
			return fmt.Errorf("%s.percentile: only a latency objective takes one", at)
		}
		if o.Kind == Resolution && o.Within.Duration <= 0 {
			return fmt.Errorf("%s.within: missing; say how soon an issue must be resolved, such as 4h", at)
		}
		if o.Kind != Resolution && o.Within.Duration != 0 {
			return fmt.Errorf("%s.within: only a resolution objective takes one", at)
		}
		if o.Service != "" {
			if o.Kind == Resolution {
				return fmt.Errorf("%s.service: a resolution objective measures the customer's own issues; leave service out", at)
			}
			for _, c := range o.Service {
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
					return fmt.Errorf("%s.service: %q has %q; use letters, digits, _ - and . (SLA events name it in their service field)", at, o.Service, c)
				}
			}
		}
		switch o.Window {
		case "", "period":
			o.Window = "period"
		case "day":
		default:
			return fmt.Errorf("%s.window: %q is neither period (the default: the billing period) nor day (each day of it; the worst counts)", at, o.Window)
		}
		if len(o.Credits) == 0 {
			return fmt.Errorf("%s.credits: missing; give at least one step such as {below: \"99.9\", credit: \"10\"}", at)
		}
		for j, c := range o.Credits {
			sat := fmt.Sprintf("%s.credits[%d]", at, j)
			side := "above"
			if o.Kind.HigherIsBetter() {
				side = "below"
			}
			if (c.Below != nil) == (c.Above != nil) || (side == "below") != (c.Below != nil) {
				return fmt.Errorf("%s: give %s (and not the other side): a %s objective credits when the measurement is %s a bound", sat, side, o.Kind, side)
			}
			if !c.Credit.IsPositive() || c.Credit.GreaterThan(hundred) {
				return fmt.Errorf("%s.credit: %s is outside (0, 100] (a percent of the period's charge)", sat, c.Credit)
			}
			if j > 0 {
				prev := o.Credits[j-1]
				worse := c.bound().GreaterThan(prev.bound())
				if o.Kind.HigherIsBetter() {
					worse = c.bound().LessThan(prev.bound())
				}
				if !worse {
					return fmt.Errorf("%s.%s: %s does not follow %s; steps go from the mildest breach to the worst", sat, side, c.bound(), prev.bound())
				}
				if c.Credit.LessThan(prev.Credit) {
					return fmt.Errorf("%s.credit: %s is less than the milder step's %s", sat, c.Credit, prev.Credit)
				}
			}
		}
		if len(o.CreditOn) == 0 {
			o.CreditOn = p.MeterNames()
		}
		for _, m := range o.CreditOn {
			if !p.Prices(m) {
				return fmt.Errorf("%s.creditOn: meter %q is not priced by the plan (priced: %v)", at, m, p.MeterNames())
			}
		}
	}
	return nil
}

// Measurement is what an objective measured over a period: Num/Den (a
// percent, or milliseconds with Den 1), kept as a fraction so that
// comparing it with a target or a bound is exact.
type Measurement struct {
	Num, Den decimal.Decimal
	// Samples is how many probes, or issues, it counts (0 for
	// availability, measured from outage intervals).
	Samples uint64
}

// Value is m rounded to 4 decimals, for display.
func (m Measurement) Value() decimal.Decimal {
	if m.Den.IsZero() {
		return decimal.Zero
	}
	return m.Num.DivRound(m.Den, 4)
}

// cmp compares m with v exactly: -1, 0 or 1.
func (m Measurement) cmp(v decimal.Decimal) int { return m.Num.Cmp(v.Mul(m.Den)) }

// Less reports whether m is less than n, exactly.
func (m Measurement) Less(n Measurement) bool { return m.Num.Mul(n.Den).LessThan(n.Num.Mul(m.Den)) }

// Evaluate tells whether m meets o's target and the credit percent it
// earns: the highest step whose bound m passes (strictly: below a below,
// above an above), 0 if none.
func (o *Objective) Evaluate(m Measurement) (met bool, credit decimal.Decimal) {
	if o.Kind.HigherIsBetter() {
		met = m.cmp(o.Target) >= 0
	} else {
		met = m.cmp(o.Target) <= 0
	}
	for _, c := range o.Credits {
		if c.Below != nil && m.cmp(*c.Below) < 0 || c.Above != nil && m.cmp(*c.Above) > 0 {
			credit = c.Credit
		}
	}
	return met, credit
}

// SLATerms are the objectives of the plan a customer is on at the end of
// a billing period, with what pricing their credits needs.
type SLATerms struct {
	Plan       string
	Currency   string
	Objectives []Objective
	plan       *Plan
}

// Credit is the credit (negative) of percent of charge, rounded as the
// plan rounds amounts.
func (t SLATerms) Credit(charge, percent decimal.Decimal) decimal.Decimal {
	return t.plan.round(charge.Mul(percent).Shift(-2)).Neg()
}

// HasSLA reports whether some plan sets SLA objectives.
func (c *Catalog) HasSLA() bool { return c.sla }

// HasSLA reports whether some plan sets SLA objectives; without one, SLA
// events have nothing to measure.
func (p *Pricing) HasSLA() bool { return p.catalog.HasSLA() }

// MaxWithin is the longest time any resolution objective gives an issue.
func (c *Catalog) MaxWithin() time.Duration { return c.maxWithin }

// MaxWithin is the catalog's longest resolution time (Catalog.MaxWithin).
func (p *Pricing) MaxWithin() time.Duration { return p.catalog.MaxWithin() }

// MeasuresService reports whether some objective measures the shared
// service (Objective.Service).
func (c *Catalog) MeasuresService(service string) bool { return c.services[service] }

// MeasuresService reports whether some objective measures the shared
// service; without one, its events have nothing to count for.
func (p *Pricing) MeasuresService(service string) bool { return p.catalog.MeasuresService(service) }

// SLA returns the objectives of the plan sub is on at the last instant of
// the billing period ending at periodEnd; ok is false when it has none.
func (p *Pricing) SLA(sub Subscriber, periodEnd time.Time) (SLATerms, bool) {
	plan, err := p.plan(sub, periodEnd.Add(-time.Nanosecond))
	if err != nil || len(plan.SLA) == 0 {
		return SLATerms{}, false
	}
	return SLATerms{Plan: plan.ID, Currency: plan.Currency, Objectives: plan.SLA, plan: plan}, true
}
