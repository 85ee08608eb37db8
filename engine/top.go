package engine

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// CustomerCharge is what a customer was charged in its billing period
// holding the watermark, in one currency: its usage and fees so far.
type CustomerCharge struct {
	Customer    string          `json:"customer"`
	Currency    string          `json:"currency"`
	Amount      decimal.Decimal `json:"amount"`
	PeriodStart time.Time       `json:"period_start"`
}

// TopCustomers returns the n customers charged most in their current
// billing periods (those holding the watermark), live: the amounts of
// their periods' windows so far and the fee rows emitted, as
// /v1/customers/{id}/summary shows them. Highest first; ties by customer.
func (e *Engine) TopCustomers(ctx context.Context, n int) ([]CustomerCharge, error) {
	shards := e.live.Load()
	if shards == nil {
		return nil, ErrNotRunning
	}
	results := make([][]CustomerCharge, len(*shards))
	for i, s := range *shards {
		if err := runOn(ctx, s, func(s *shard) { results[i] = s.topCustomers(n) }); err != nil {
			return nil, err
		}
	}
	return topOf(slices.Concat(results...), n), nil
}

// topOf sorts charges highest first (ties by customer, then currency) and
// keeps n.
func topOf(charges []CustomerCharge, n int) []CustomerCharge {
	slices.SortFunc(charges, func(a, b CustomerCharge) int {
		if c := b.Amount.Cmp(a.Amount); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Customer, b.Customer), cmp.Compare(a.Currency, b.Currency))
	})
	return charges[:min(n, len(charges))]
}

// topCustomers is TopCustomers on one shard; it runs on its goroutine.
func (s *shard) topCustomers(n int) []CustomerCharge {
	if s.watermarkNs == minWatermark {
		return nil
	}
	type key struct{ customer, currency string }
	sums := map[key]CustomerCharge{}
	for k, p := range s.periods {
		if k.startNs > s.watermarkNs || p.endNs <= s.watermarkNs {
			continue // not the period holding the watermark
		}
		customer, meter := s.names.str(k.customer), s.meter(p).Name
		amount := p.get(numChargedAmount)
		if p.revision > 0 { // its fee row was emitted
			amount = amount.Add(p.get(numEmittedAmount))
		}
		kk := key{customer, s.currency(customer, meter, k.startNs)}
		c := sums[kk]
		c.Customer, c.Currency, c.Amount, c.PeriodStart = kk.customer, kk.currency, c.Amount.Add(amount), time.Unix(0, k.startNs).UTC()
		sums[kk] = c
	}
	return topOf(slices.Collect(maps.Values(sums)), n)
}

// TopCustomers merges the tasks' top customers.
func (n *Node) TopCustomers(ctx context.Context, count int) ([]CustomerCharge, error) {
	var all []CustomerCharge
	for _, t := range n.running() {
		top, err := t.engine.TopCustomers(ctx, count)
		if err != nil {
			return nil, err
		}
		all = append(all, top...)
	}
	return topOf(all, count), nil
}
