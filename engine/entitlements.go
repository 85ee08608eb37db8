package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// EntitlementRules is what the engine needs of a Rater to report
// entitlements (rating.Pricing has it). With a Rater that lacks it, no
// customer has any.
type EntitlementRules interface {
	// Entitlements lists the entitlements of the plan pricing sub at t.
	Entitlements(sub rating.Subscriber, t time.Time) []rating.MeterEntitlement
	// Entitlement is meter's, under the plan pricing sub at t.
	Entitlement(sub rating.Subscriber, meter string, t time.Time) (rating.MeterEntitlement, bool)
	// HasEntitlements reports whether any plan sets one.
	HasEntitlements() bool
	// PlanEntitlements lists the entitlements of plan id's version in
	// force at t.
	PlanEntitlements(id string, t time.Time) []rating.MeterEntitlement
	// PlanAt is the plan pricing sub at t; ok is false when none does.
	PlanAt(sub rating.Subscriber, t time.Time) (id string, ok bool)
	// HasGrants reports whether some plan limits a meter by grants, and
	// GrantsLimit whether one limits meter so.
	HasGrants() bool
	GrantsLimit(meter string) bool
}

// ErrNoEntitlement is returned by CheckEntitlement for a meter the
// customer's plan sets no entitlement on.
var ErrNoEntitlement = errors.New("no entitlement")

// EntitlementReport is one meter's entitlement evaluated against the
// customer's billing period in progress, from live state: Used counts
// every record aggregated so far (units), or what the period's rows
// charged so far (amount; open windows join it when emitted).
type EntitlementReport struct {
	Meter       string    `json:"meter"`
	Plan        string    `json:"plan"`
	PeriodStart time.Time `json:"period_start"`
	PeriodEnd   time.Time `json:"period_end"`
	// Currency is the limit's currency when it counts an amount.
	Currency string `json:"currency,omitempty"`
	rating.EntitlementStatus
	// Grants, with of: grants, are the customer's grants of the meter not
	// expired (the limit is their units, used what was drawn from them),
	// and Overage the usage none of them covered.
	Grants  []GrantReport    `json:"grants,omitempty"`
	Overage *decimal.Decimal `json:"overage,omitempty"`
}

// Entitlements is the live view of one customer's entitlements.
type Entitlements struct {
	Customer string `json:"customer"`
	// At is the time the billing periods are taken at: the watermark, or
	// the clock before any record was read.
	At           time.Time           `json:"at"`
	Entitlements []EntitlementReport `json:"entitlements"`
}

// EntitlementCheck answers whether Units more units of a meter are
// allowed now.
type EntitlementCheck struct {
	Customer string          `json:"customer"`
	Units    decimal.Decimal `json:"units"`
	Allowed  bool            `json:"allowed"`
	// More is what Units add in the limit's basis: the units, or, for an
	// amount limit, their charge on top of all the period's usage so far.
	More decimal.Decimal `json:"more"`
	// Pending, for an amount limit, is the charge of the period's usage
	// aggregated but not yet charged (windows not emitted yet): Used +
	// Pending + More is what the period would have charged.
	Pending *decimal.Decimal `json:"pending,omitempty"`
	EntitlementReport
}

// Entitlements evaluates customer's entitlements against its billing
// periods in progress, on its shard (consistent with the state the next
// checkpoint holds).
func (e *Engine) Entitlements(ctx context.Context, customer string) (Entitlements, error) {
	now := e.now()
	var out Entitlements
	err := e.onShard(ctx, customer, func(s *shard) {
		at := s.entitlementTime(now)
		out = Entitlements{Customer: customer, At: time.Unix(0, at).UTC(), Entitlements: []EntitlementReport{}}
		for _, me := range s.entitlements(customer, at) {
			report, _ := s.evaluate(customer, me, at)
			out.Entitlements = append(out.Entitlements, report)
		}
	})
	if err != nil {
		return Entitlements{}, err // out may still be written by the shard
	}
	return out, nil
}

// CheckEntitlement answers whether units more units of meter are allowed
// for customer now: a hard limit allows up to the limit, a soft one
// everything (see rating.Entitlement.Allows).
func (e *Engine) CheckEntitlement(ctx context.Context, customer, meter string, units decimal.Decimal) (EntitlementCheck, error) {
	if e.decoder.meters.byName(meter) == nil {
		return EntitlementCheck{}, fmt.Errorf("%w %q; configured: %v", ErrUnknownMeter, meter, e.decoder.meters.Names())
	}
	if units.IsNegative() {
		return EntitlementCheck{}, fmt.Errorf("%w: units %s is negative", ErrBadRequest, units)
	}
	now := e.now()
	var out EntitlementCheck
	var err error
	qerr := e.onShard(ctx, customer, func(s *shard) {
		at := s.entitlementTime(now)
		me, ok := s.entitlement(customer, meter, at)
		if !ok {
			err = fmt.Errorf("%w on meter %s for customer %s in the plan in force at %s", ErrNoEntitlement, meter, customer,
				time.Unix(0, at).UTC().Format(time.RFC3339))
			return
		}
		report, p := s.evaluate(customer, me, at)
		check := EntitlementCheck{Customer: customer, Units: units, More: units, EntitlementReport: report}
		if me.Entitlement.Of == rating.LimitAmount || me.Entitlement.Of == rating.LimitGrantAmount {
			// Money: the units' charge on top of the period's usage, and
			// what its usage not charged yet will draw.
			var pending decimal.Decimal
			if pending, check.More, err = s.chargeOf(customer, me, at, p, units); err != nil {
				return
			}
			check.Pending = &pending
			check.Allowed = me.Entitlement.WithLimit(report.Limit).Allows(report.Used.Add(pending), check.More)
		} else {
			check.Allowed = me.Entitlement.WithLimit(report.Limit).Allows(report.Used, check.More)
		}
		out = check
	})
	if qerr != nil {
		return EntitlementCheck{}, qerr
	}
	return out, err
}

// entitlementTime is the time billing periods are taken at: the
// watermark, or now before any record was read.
func (s *shard) entitlementTime(now time.Time) int64 {
	if s.watermarkNs == minWatermark {
		return now.UnixNano()
	}
	return s.watermarkNs
}

// entitlements lists customer's entitlements at atNs.
func (s *shard) entitlements(customer string, atNs int64) []rating.MeterEntitlement {
	rules, ok := s.rater.(EntitlementRules)
	if !ok {
		return nil
	}
	return rules.Entitlements(s.subscriber(customer), time.Unix(0, atNs).UTC())
}

// entitlement is customer's entitlement on meter at atNs; ok is false
// when it has none.
func (s *shard) entitlement(customer, meter string, atNs int64) (rating.MeterEntitlement, bool) {
	rules, ok := s.rater.(EntitlementRules)
	if !ok {
		return rating.MeterEntitlement{}, false
	}
	return rules.Entitlement(s.subscriber(customer), meter, time.Unix(0, atNs).UTC())
}

// periodUsage is what period p used (nil: nothing yet), in the basis of:
// its units, or the amount its emitted windows charged; units is its units
// whatever of is (allowance thresholds count them).
func periodUsage(p *window, m *meterSpec, of rating.LimitBasis) (used, units decimal.Decimal) {
	if p == nil {
		return decimal.Zero, decimal.Zero
	}
	units = p.quantity(m)
	if of == rating.LimitAmount {
		return p.get(numChargedAmount), units
	}
	return units, units
}

// evaluate evaluates me against customer's billing period holding atNs,
// from its period aggregate, which it also returns (nil: nothing used
// yet).
func (s *shard) evaluate(customer string, me rating.MeterEntitlement, atNs int64) (EntitlementReport, *window) {
	cust := s.customers.get(customer)
	startNs, endNs := billingPeriod(atNs, cust.loc, cust.anchorDay)
	var p *window
	m := s.meters.byName(me.Meter)
	if id, ok := s.names.find(customer); ok && m != nil {
		p = s.periods[windowKey{meter: uint32(m.index), customer: id, startNs: startNs, period: true}]
	}
	report := EntitlementReport{Meter: me.Meter, Plan: me.Plan, PeriodStart: time.Unix(0, startNs).UTC(), PeriodEnd: time.Unix(0, endNs).UTC()}
	if me.Entitlement.Of.Grants() {
		b := s.balanceOf(customer, me.Meter, false)
		if b == nil {
			b = &balance{}
		}
		_, report.EntitlementStatus = b.status(me, max(atNs, b.clockNs))
		if me.Entitlement.Of == rating.LimitGrantAmount {
			report.Currency = me.Currency
		}
		overage := b.overage
		report.Grants, report.Overage = grantReports(b), &overage
		return report, p
	}
	used, units := periodUsage(p, m, me.Entitlement.Of)
	if me.Entitlement.Of == rating.LimitAmount {
		report.Currency = me.Currency
	}
	report.EntitlementStatus = me.Entitlement.Status(used, units, me.FreeAllowance)
	return report, p
}

// chargeOf prices, under the plan in force at atNs (the one whose
// entitlement is checked), the usage of period p not charged yet (pending:
// from the quantity its emitted windows charged to all it aggregated) and
// units more on top. Increments of a period add up, so pending + more is
// the charge from the charged quantity to the new total.
func (s *shard) chargeOf(customer string, me rating.MeterEntitlement, atNs int64, p *window, units decimal.Decimal) (pending, more decimal.Decimal, err error) {
	m := s.meters.byName(me.Meter)
	switch {
	case me.PerEvent:
		return decimal.Zero, decimal.Zero, fmt.Errorf("%w: meter %s is priced per event (bands, destinations or event fees), so units alone have no price; its amount limit counts what was charged: see /v1/customers/%s/entitlements",
			ErrBadRequest, me.Meter, customer)
	case m == nil:
		return decimal.Zero, decimal.Zero, fmt.Errorf("%w %q", ErrUnknownMeter, me.Meter)
	case !m.additive():
		return decimal.Zero, decimal.Zero, fmt.Errorf("%w: meter %s aggregates with %v, whose windows are priced on their own, not by the period's units: its amount limit counts what was charged",
			ErrBadRequest, me.Meter, m.Aggregation)
	}
	charged, sofar := decimal.Zero, decimal.Zero
	if p != nil {
		charged, sofar = p.get(numEmittedQuantity), p.quantity(m)
	}
	sub, at := s.subscriber(customer), time.Unix(0, atNs).UTC()
	c, err := s.rater.Increment(sub, me.Meter, at, charged, sofar)
	if err != nil {
		return decimal.Zero, decimal.Zero, fmt.Errorf("price the pending usage of %s: %w", me.Meter, err)
	}
	next, err := s.rater.Increment(sub, me.Meter, at, sofar, sofar.Add(units))
	if err != nil {
		return decimal.Zero, decimal.Zero, fmt.Errorf("price %s more units of %s: %w", units, me.Meter, err)
	}
	return c.Amount, next.Amount, nil
}
