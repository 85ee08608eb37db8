package engine

import (
	"cmp"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// emitPeriodFee returns the next revision of period p's fee row, if its plan
// has a fee for the meter and the amount differs from the last one emitted.
func (s *shard) emitPeriodFee(p *window) (RatedRow, bool, error) {
	start := time.Unix(0, p.key.startNs).UTC()
	m := s.meter(p)
	meter, customer := m.Name, s.names.str(p.key.customer)
	charge, ok, err := s.rater.PeriodFee(s.subscriber(customer), meter, start, time.Unix(0, p.endNs).UTC(), p.get(numChargedAmount))
	if err != nil {
		return RatedRow{}, false, fmt.Errorf("engine: period fee of %s/%s/%s: %w", meter, customer, start.Format(time.RFC3339), err)
	}
	if !ok && p.revision > 0 && !p.get(numEmittedAmount).IsZero() {
		// A fee emitted before is no longer owed (a cancellation or a plan
		// change dated at the period's start): revised to 0, in the
		// currency its meter is priced in over the period.
		currency := cmp.Or(s.currency(customer, meter, p.key.startNs), s.currency(customer, meter, p.endNs-1))
		if currency != "" {
			charge, ok = rating.Charge{Currency: currency, Lines: []rating.Line{{Description: "no period fee owed (the subscription changed)"}}}, true
		}
	}
	if !ok || (p.revision > 0 && charge.Amount.Equal(p.get(numEmittedAmount))) {
		return RatedRow{}, false, nil
	}
	prevAmount := p.get(numEmittedAmount)
	p.revision++
	p.emittedFinal = true
	row := RatedRow{
		Tenant: s.tenant, Meter: meter, Customer: customer, GroupKey: PeriodFeeGroup,
		WindowStart: start, WindowEnd: time.Unix(0, p.endNs).UTC(),
		Quantity: p.quantity(m), Count: p.count, Amount: charge.Amount, Currency: charge.Currency,
		Revision: p.revision, Final: true, Breakdown: charge.Lines, Plan: charge.Plan,
	}
	row.setDeltas(decimal.Zero, prevAmount, false)
	return row, true, nil
}

// emit rates w and returns its next revision. Invariant: revisions of a
// window only grow, and each carries the window's full totals.
//
// A SUM or COUNT window is charged incrementally against its billing
// period: the quantity it gained since its last revision moves the period's
// charged-to-date quantity, and the window's amount grows by the charge of
// that move. So allowances and tiers apply to the period, and the amounts of
// a period's windows always add up to the charge of the period's total.
// Other aggregations do not add up over a period; each window is priced on
// its own.
func (s *shard) emit(w *window, final bool) (RatedRow, error) {
	start := time.Unix(0, w.key.startNs).UTC()
	m := s.meter(w)
	meter, customer := m.Name, s.names.str(w.key.customer)
	quantity := w.quantity(m)
	// The period aggregate the window charges against: the one apply
	// linked, while it is in memory (not dropped), else looked up or read
	// back by its key.
	p := w.period
	if p == nil || p.dropped {
		cust := s.customers.get(customer)
		periodStartNs, _ := billingPeriod(w.key.startNs, cust.loc, cust.anchorDay)
		pkey := windowKey{meter: w.key.meter, customer: w.key.customer, startNs: periodStartNs, period: true}
		if p = s.periods[pkey]; p == nil {
			p = s.loadCold(pkey, w.periodEndNs)
		}
	}
	if p == nil {
		return RatedRow{}, fmt.Errorf("engine: invariant broken: window %v has no billing-period aggregate to charge against", s.name(w.key))
	}
	var amount decimal.Decimal
	emitted := w.get(numEmittedAmount)
	var charge rating.Charge
	var err error
	switch {
	case w.perEvent:
		// The window's events were priced one by one: the period's sum of
		// event charges moves by what the window gained since its last
		// revision.
		money := w.get(numMoney)
		before := p.get(numEmittedMoney)
		after := before.Add(money.Sub(w.get(numEmittedMoney)))
		usage := rating.WindowUsage{Rate: s.names.str(w.rate), Units: quantity, Events: w.count, Amount: money}
		if charge, err = s.rater.IncrementEvents(s.subscriber(customer), meter, start, usage, before, after); err == nil {
			amount = emitted.Add(charge.Amount)
			p.set(numEmittedMoney, after)
			w.set(numEmittedMoney, money)
			// The period moved even when the window's charge is 0 (inside
			// an allowance, a zero-price tier, a package block already
			// paid, an amount rounding to 0): the move must be
			// checkpointed, or a restart charges it again.
			s.markDirty(p)
		}
	case m.additive():
		before := p.get(numEmittedQuantity)
		after := before.Add(quantity.Sub(w.get(numEmittedQuantity)))
		if charge, err = s.rater.Increment(s.subscriber(customer), meter, start, before, after); err == nil {
			amount = emitted.Add(charge.Amount)
			p.set(numEmittedQuantity, after)
			s.markDirty(p) // as above: even a zero charge moves the period
		}
	default:
		if charge, err = s.rater.Increment(s.subscriber(customer), meter, start, decimal.Zero, quantity); err == nil {
			amount = charge.Amount
		}
	}
	if err == nil && !amount.Equal(emitted) {
		p.addTo(numChargedAmount, amount.Sub(emitted))
		s.markDirty(p) // what the period charged is durable state too
		s.queueFee(p)  // its true-up may change
		if s.watchLimits && m.additive() {
			s.checkLimits(p, m, customer, w.key.startNs, w.key.startNs, true)
		}
		if s.drawsGrants {
			s.drawGrantAmount(customer, m, p, w.key.startNs, w.endNs)
		}
	}
	if err != nil {
		return RatedRow{}, fmt.Errorf("engine: rate window %s/%s/%s: %w", meter, customer, start.Format(time.RFC3339), err)
	}
	w.revision++
	w.changed, w.emittedFinal = false, final
	prevQuantity := w.get(numEmittedQuantity)
	w.set(numEmittedQuantity, quantity)
	row := RatedRow{
		Tenant:      s.tenant,
		Meter:       meter,
		Customer:    customer,
		GroupKey:    s.names.str(w.key.group),
		WindowStart: start,
		WindowEnd:   time.Unix(0, w.endNs).UTC(),
		Quantity:    quantity,
		Count:       w.count,
		Amount:      amount,
		Currency:    charge.Currency,
		UnitPrice:   charge.UnitPrice,
		Revision:    w.revision,
		Final:       final,
		Breakdown:   charge.Lines,
		Plan:        charge.Plan,
	}
	row.setDeltas(prevQuantity, emitted, true)
	return row, nil
}
