package engine

import (
	"fmt"
	"slices"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// Pricing prices usage with the plan catalog: a customer's subscription
// active at a window's start names the plan, the version in force at that
// time prices it; customers without one get the default plan, if any.
type Pricing struct {
	catalog     *rating.Catalog
	subs        *rating.Subscriptions
	defaultPlan string
}

func (p *Pricing) plan(sub Subscriber, at time.Time) (*rating.Plan, Reason, error) {
	id, ok := p.subs.Timeline(sub.ID, sub.Changes).Lookup(at)
	if !ok {
		if p.defaultPlan == "" {
			return nil, ReasonNoSubscription, fmt.Errorf("customer %s has no subscription at %s and there is no defaultPlan", sub.ID, at.Format(time.RFC3339))
		}
		id = p.defaultPlan
	}
	plan, err := p.catalog.Plan(id, at)
	if err != nil {
		return nil, ReasonNoSubscription, err
	}
	return plan, "", nil
}

// RateEvent implements Rater.
func (p *Pricing) RateEvent(sub Subscriber, meter string, windowStart time.Time, ev *Event) (EventRating, Reason, error) {
	plan, reason, err := p.plan(sub, windowStart)
	if err != nil {
		return EventRating{}, reason, err
	}
	r, reason, err := rateWithPlan(plan, meter, ev)
	if err != nil {
		return r, reason, fmt.Errorf("customer %s: %w", sub.ID, err)
	}
	return r, "", nil
}

// IncrementEvents implements Rater.
func (p *Pricing) IncrementEvents(sub Subscriber, meter string, windowStart time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error) {
	plan, _, err := p.plan(sub, windowStart)
	if err != nil {
		return rating.Charge{}, err
	}
	return plan.IncrementEvents(meter, usage, before, after)
}

// Increment implements Rater.
func (p *Pricing) Increment(sub Subscriber, meter string, windowStart time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	plan, _, err := p.plan(sub, windowStart)
	if err != nil {
		return rating.Charge{}, err
	}
	return plan.Increment(meter, before, after)
}

// shares returns the plans sub subscribed to during a period, each with
// its share of the period. The default plan never fills a gap: it prices
// usage of customers without a subscription, and makes nobody owe its
// fees, so a subscriber who starts mid-period owes the started share only
// and a customer without any subscription owes no fee or true-up.
func (p *Pricing) shares(sub Subscriber, periodStart, periodEnd time.Time) []rating.Share {
	total := decimal.NewFromInt(int64(periodEnd.Sub(periodStart)))
	var shares []rating.Share
	for _, seg := range p.subs.Timeline(sub.ID, sub.Changes).Segments("", periodStart, periodEnd) {
		plan, err := p.catalog.Plan(seg.Plan, seg.Start)
		if err != nil {
			continue // no version in force: no fee for that stretch
		}
		shares = append(shares, rating.Share{Plan: plan, Fraction: decimal.NewFromInt(int64(seg.End.Sub(seg.Start))).Div(total)})
	}
	return shares
}

// PeriodFee implements Rater: each plan the customer was on during
// the period contributes its fees for its share of the period.
func (p *Pricing) PeriodFee(sub Subscriber, meter string, periodStart, periodEnd time.Time, usageCharged decimal.Decimal) (rating.Charge, bool, error) {
	return rating.ProratedPeriodFee(p.shares(sub, periodStart, periodEnd), meter, usageCharged)
}

// CheckPlan implements SubscriptionRules.
func (p *Pricing) CheckPlan(id string) error {
	if !slices.Contains(p.catalog.IDs(), id) {
		return fmt.Errorf("no plan %q; plans are %v", id, p.catalog.IDs())
	}
	return nil
}

// Subscribers implements SubscriptionRules.
func (p *Pricing) Subscribers() []string { return p.subs.Customers() }

// FeeMeters implements SubscriptionRules: the meters with a flat fee
// or a commitment in a plan sub was subscribed to during the period. The
// default plan does not count (see shares).
func (p *Pricing) FeeMeters(sub Subscriber, periodStart, periodEnd time.Time) []string {
	var out []string
	for _, sh := range p.shares(sub, periodStart, periodEnd) {
		for _, name := range sh.Plan.MeterNames() {
			if price := sh.Plan.Meters[name]; (!price.FlatFee.IsZero() || !price.MinimumCommitment.IsZero()) && !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	return out
}

// SubscribedFrom implements SubscriptionRules.
func (p *Pricing) SubscribedFrom(sub Subscriber) (time.Time, bool) {
	for _, c := range p.subs.Timeline(sub.ID, sub.Changes) {
		if c.Plan != "" {
			return c.At, true
		}
	}
	return time.Time{}, false
}

// NewPricing prices with catalog, the configured subscriptions and, for
// customers without one, defaultPlan ("": none, their usage is
// dead-lettered as no_subscription).
func NewPricing(catalog *rating.Catalog, subs *rating.Subscriptions, defaultPlan string) *Pricing {
	return &Pricing{catalog: catalog, subs: subs, defaultPlan: defaultPlan}
}

// Catalog returns the plans.
func (p *Pricing) Catalog() *rating.Catalog { return p.catalog }
