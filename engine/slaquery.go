package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// ErrNoSLA is returned by SLA for a customer whose plan sets no
// objectives in the period asked for.
var ErrNoSLA = errors.New("no SLA objectives")

// SLAReport is one customer's objectives measured over a billing period,
// from live state: the period in progress measured so far (outages not
// over counted until the watermark), or a closed one as credited.
type SLAReport struct {
	Customer    string    `json:"customer"`
	Plan        string    `json:"plan"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// At is when the measurement runs to: the watermark, or the period's
	// end once it closed (Closed: its credits are rows).
	At         time.Time         `json:"at"`
	Closed     bool              `json:"closed"`
	Currency   string            `json:"currency"`
	Objectives []ObjectiveReport `json:"objectives"`
}

// ObjectiveReport is one objective's measurement, state and credit.
type ObjectiveReport struct {
	Name   string               `json:"name"`
	Kind   rating.ObjectiveKind `json:"kind"`
	Target decimal.Decimal      `json:"target"`
	// Measured is in percent (availability, error_rate, resolution) or
	// milliseconds (latency), rounded to 4 decimals; Samples counts the
	// probes, issues or outages it comes from.
	Measured decimal.Decimal `json:"measured"`
	Unit     string          `json:"unit"`
	Samples  uint64          `json:"samples"`
	// State is met or breached; CreditPercent the schedule's step reached
	// (0: none), Credit the sum of Credits, negative.
	State         string          `json:"state"`
	CreditPercent decimal.Decimal `json:"credit_percent"`
	Credit        decimal.Decimal `json:"credit"`
	Credits       []MeterCredit   `json:"credits"`
}

// MeterCredit is an objective's credit on one meter: a share of what the
// meter charged in the period so far (Charge), or, for a closed period,
// the credit row emitted.
type MeterCredit struct {
	Meter  string          `json:"meter"`
	Charge decimal.Decimal `json:"charge"`
	Amount decimal.Decimal `json:"amount"`
}

// SLA measures customer's objectives over the billing period starting in
// month (its first day, any time in it; zero: the period in progress).
func (e *Engine) SLA(ctx context.Context, customer string, month time.Time) (SLAReport, error) {
	now := e.now()
	var out SLAReport
	var err error
	qerr := e.onShard(ctx, customer, func(s *shard) {
		out, err = s.slaReport(customer, month, s.entitlementTime(now))
	})
	if qerr != nil {
		return SLAReport{}, qerr
	}
	return out, err
}

func (s *shard) slaReport(customer string, month time.Time, atNs int64) (SLAReport, error) {
	rules, ok := s.rater.(SLARules)
	if !ok {
		return SLAReport{}, fmt.Errorf("%w: this engine has no plan catalog", ErrNoSLA)
	}
	cust := s.customers.get(customer)
	startNs, endNs := periodOfMonth(cust, month, atNs)
	end := time.Unix(0, endNs).UTC()
	terms, ok := rules.SLA(s.subscriber(customer), end)
	if !ok {
		return SLAReport{}, fmt.Errorf("%w for customer %s in the billing period %s..%s (the plan in force at its end sets none)",
			ErrNoSLA, customer, time.Unix(0, startNs).UTC().Format(time.RFC3339), end.Format(time.RFC3339))
	}
	sp := s.slaPeriods[slaKey{customer, startNs}]
	if sp == nil && s.slaSettled(s.slaSettle(cust, endNs)) {
		return SLAReport{}, fmt.Errorf("%w in memory for customer %s in the billing period %s..%s: it is settled (its credits are rated rows, group key %s<objective>)",
			ErrNoSLA, customer, time.Unix(0, startNs).UTC().Format(time.RFC3339), end.Format(time.RFC3339), SLAGroupPrefix)
	}
	if sp == nil {
		sp = newSLAPeriod(slaKey{customer, startNs}, endNs, s.slaSettle(cust, endNs))
	}
	closed := sp.settleNs != 0 && s.slaClosed(sp, s.watermarkNs) && s.slaClosedSettles[sp.settleNs]
	until := min(atNs, endNs)
	out := SLAReport{Customer: customer, Plan: terms.Plan, PeriodStart: time.Unix(0, startNs).UTC(), PeriodEnd: end,
		At: time.Unix(0, until).UTC(), Closed: closed, Currency: terms.Currency, Objectives: []ObjectiveReport{}}
	for i := range terms.Objectives {
		o := &terms.Objectives[i]
		m := s.measure(sp, o, atNs)
		met, percent := o.Evaluate(m)
		r := ObjectiveReport{Name: o.Name, Kind: o.Kind, Target: o.Target, Measured: m.Value(), Unit: "percent", Samples: m.Samples,
			State: "met", CreditPercent: percent, Credits: []MeterCredit{}}
		if o.Kind == rating.Latency {
			r.Unit = "ms"
		}
		if !met {
			r.State = "breached"
		}
		for _, meter := range o.CreditOn {
			c := MeterCredit{Meter: meter}
			if closed {
				c.Amount = sp.credits[o.Name+"\x00"+meter].amount
			} else {
				c.Charge = s.liveCharge(customer, meter, startNs)
				if percent.IsPositive() {
					c.Amount = terms.Credit(c.Charge, percent)
				}
			}
			r.Credit = r.Credit.Add(c.Amount)
			r.Credits = append(r.Credits, c)
		}
		out.Objectives = append(out.Objectives, r)
	}
	return out, nil
}

// liveCharge is what customer's period starting at startNs charged for
// meter so far, from memory only (a query reads nothing back from the
// store): its usage rows and its fee row.
func (s *shard) liveCharge(customer, meter string, startNs int64) decimal.Decimal {
	m := s.meters.byName(meter)
	id, ok := s.names.find(customer)
	if m == nil || !ok {
		return decimal.Zero
	}
	p := s.periods[windowKey{meter: uint32(m.index), customer: id, startNs: startNs, period: true}]
	if p == nil {
		return decimal.Zero
	}
	return p.get(numChargedAmount).Add(p.get(numEmittedAmount))
}

// SLA answers from the customer's task.
func (n *Node) SLA(ctx context.Context, customer string, month time.Time) (SLAReport, error) {
	e := n.customerEngine(customer)
	if e == nil {
		return SLAReport{}, ErrNotRunning
	}
	return e.SLA(ctx, customer, month)
}
