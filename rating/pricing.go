package rating

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// Subscriber is a customer as pricing sees it: its id and the subscription
// changes its subscription events made, which apply on top of its
// configured subscriptions (Subscriptions.Timeline).
type Subscriber struct {
	ID      string
	Changes []Change
}

// Usage is one event as pricing sees it. Units is what it adds to its
// meter (its value, or 1 for a count); it is asked for only when the price
// is per event.
type Usage interface {
	Units() decimal.Decimal
	At() time.Time
	Dim(key string) (string, bool)
}

// EventRating is how a plan prices one event.
type EventRating struct {
	// PerEvent is set when the event is charged on its own: Amount is its
	// unrounded charge, and windows are charged by the sum of theirs.
	PerEvent bool
	Amount   decimal.Decimal
	// Rate names the band or destination rate the event is priced at. It
	// joins the group key as the dimension rate=<name>, so that each row
	// is priced at one rate and its breakdown can say which.
	Rate string
}

// Why usage cannot be priced: Pricing's errors wrap one of these, or are a
// rating error.
var (
	// ErrNoSubscription: the customer has no plan at the usage's time and
	// there is no default plan.
	ErrNoSubscription = errors.New("no subscription")
	// ErrUnpriced: the customer's plan does not price the meter.
	ErrUnpriced = errors.New("unpriced")
)

// refusal is an error of kind ErrNoSubscription or ErrUnpriced that reads
// as its cause.
type refusal struct{ kind, err error }

func (r refusal) Error() string   { return r.err.Error() }
func (r refusal) Unwrap() []error { return []error{r.kind, r.err} }

// Pricing prices usage with the plan catalog: a customer's subscription
// active at a window's start names the plan, the version in force at that
// time prices it; customers without one get the default plan, if any. It
// is safe for concurrent use and deterministic.
type Pricing struct {
	catalog     *Catalog
	subs        *Subscriptions
	defaultPlan string
}

// NewPricing prices with catalog, the configured subscriptions and, for
// customers without one, defaultPlan ("": none, their usage is refused
// with ErrNoSubscription).
func NewPricing(catalog *Catalog, subs *Subscriptions, defaultPlan string) *Pricing {
	return &Pricing{catalog: catalog, subs: subs, defaultPlan: defaultPlan}
}

// Catalog returns the plans.
func (p *Pricing) Catalog() *Catalog { return p.catalog }

func (p *Pricing) plan(sub Subscriber, at time.Time) (*Plan, error) {
	id, ok := p.subs.Timeline(sub.ID, sub.Changes).Lookup(at)
	if !ok {
		if p.defaultPlan == "" {
			return nil, refusal{ErrNoSubscription, fmt.Errorf("customer %s has no subscription at %s and there is no defaultPlan", sub.ID, at.Format(time.RFC3339))}
		}
		id = p.defaultPlan
	}
	plan, err := p.catalog.Plan(id, at)
	if err != nil {
		return nil, refusal{ErrNoSubscription, err}
	}
	return plan, nil
}

// RateEvent decides how one event of meter is priced before it is
// aggregated, under the plan in force at windowStart (the start of its
// window). When the price is per event (connect fees, per-event bounds,
// time bands, destinations) the rating carries the event's own charge and
// rate.
func (p *Pricing) RateEvent(sub Subscriber, meter string, windowStart time.Time, ev Usage) (EventRating, error) {
	plan, err := p.plan(sub, windowStart)
	if err != nil {
		return EventRating{}, err
	}
	price, ok := plan.Meters[meter]
	if !ok {
		return EventRating{}, refusal{ErrUnpriced, fmt.Errorf("customer %s: plan %s does not price it", sub.ID, plan.ID)}
	}
	if !price.PerEvent() {
		return EventRating{}, nil
	}
	c, err := plan.RateEvent(meter, ev.Units(), ev.At(), ev.Dim)
	if err != nil {
		return EventRating{}, fmt.Errorf("customer %s: %w", sub.ID, err)
	}
	return EventRating{PerEvent: true, Amount: c.Amount, Rate: c.Rate}, nil
}

// Increment is the charge of moving the billing period's charged-to-date
// quantity from before to after, under the plan in force at windowStart.
func (p *Pricing) Increment(sub Subscriber, meter string, windowStart time.Time, before, after decimal.Decimal) (Charge, error) {
	plan, err := p.plan(sub, windowStart)
	if err != nil {
		return Charge{}, err
	}
	return plan.Increment(meter, before, after)
}

// IncrementEvents is Increment for a window of a per-event price: before
// and after are the period's sums of event charges.
func (p *Pricing) IncrementEvents(sub Subscriber, meter string, windowStart time.Time, usage WindowUsage, before, after decimal.Decimal) (Charge, error) {
	plan, err := p.plan(sub, windowStart)
	if err != nil {
		return Charge{}, err
	}
	return plan.IncrementEvents(meter, usage, before, after)
}

// Currency is the currency of the plan pricing sub's meter at t.
func (p *Pricing) Currency(sub Subscriber, meter string, t time.Time) (string, bool) {
	plan, err := p.plan(sub, t)
	if err != nil {
		return "", false
	}
	if _, ok := plan.Meters[meter]; !ok {
		return "", false
	}
	return plan.Currency, true
}

// shares returns the plans sub subscribed to during a period, each with
// its share of the period. The default plan never fills a gap: it prices
// usage of customers without a subscription, and makes nobody owe its
// fees, so a subscriber who starts mid-period owes the started share only
// and a customer without any subscription owes no fee or true-up.
func (p *Pricing) shares(sub Subscriber, periodStart, periodEnd time.Time) []Share {
	total := decimal.NewFromInt(int64(periodEnd.Sub(periodStart)))
	var shares []Share
	for _, seg := range p.subs.Timeline(sub.ID, sub.Changes).Segments("", periodStart, periodEnd) {
		plan, err := p.catalog.Plan(seg.Plan, seg.Start)
		if err != nil {
			continue // no version in force: no fee for that stretch
		}
		shares = append(shares, Share{Plan: plan, Fraction: decimal.NewFromInt(int64(seg.End.Sub(seg.Start))).Div(total)})
	}
	return shares
}

// PeriodFee is what a closed billing period of the meter adds on top of
// its usage: each plan the customer was on during the period contributes
// its fees for its share of the period; ok is false when none has a fee.
func (p *Pricing) PeriodFee(sub Subscriber, meter string, periodStart, periodEnd time.Time, usageCharged decimal.Decimal) (Charge, bool, error) {
	return ProratedPeriodFee(p.shares(sub, periodStart, periodEnd), meter, usageCharged)
}

// CheckPlan reports whether a subscription event may name plan id.
func (p *Pricing) CheckPlan(id string) error {
	if !slices.Contains(p.catalog.IDs(), id) {
		return fmt.Errorf("no plan %q; plans are %v", id, p.catalog.IDs())
	}
	return nil
}

// ConfiguredChanges lists the times customer's configured subscriptions
// start and end.
func (p *Pricing) ConfiguredChanges(customer string) []time.Time {
	var out []time.Time
	for _, c := range p.subs.Timeline(customer, nil) {
		out = append(out, c.At)
	}
	return out
}

// PeriodCurrencies lists the currencies of the plans sub is subscribed to
// during the period (the default plan does not count, as for fees).
func (p *Pricing) PeriodCurrencies(sub Subscriber, periodStart, periodEnd time.Time) []string {
	var out []string
	covered := decimal.Zero
	for _, sh := range p.shares(sub, periodStart, periodEnd) {
		covered = covered.Add(sh.Fraction)
		if !slices.Contains(out, sh.Plan.Currency) {
			out = append(out, sh.Plan.Currency)
		}
	}
	// The default plan prices usage in the stretches no subscription
	// covers.
	if covered.LessThan(decimal.NewFromInt(1)) && p.defaultPlan != "" {
		if plan, err := p.catalog.Plan(p.defaultPlan, periodStart); err == nil && !slices.Contains(out, plan.Currency) {
			out = append(out, plan.Currency)
		}
	}
	return out
}

// PlanCurrency is the currency of plan id's version in force at t; ok is
// false when none is.
func (p *Pricing) PlanCurrency(id string, t time.Time) (string, bool) {
	plan, err := p.catalog.Plan(id, t)
	if err != nil {
		return "", false
	}
	return plan.Currency, true
}

// Subscribers lists the customers with configured subscriptions.
func (p *Pricing) Subscribers() []string { return p.subs.Customers() }

// FeeMeters lists the meters with a flat fee or a commitment in a plan sub
// was subscribed to during the period. The default plan does not count
// (see shares).
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

// SubscribedFrom is when sub was first on a plan (configured or by its
// events); ok is false if never.
func (p *Pricing) SubscribedFrom(sub Subscriber) (time.Time, bool) {
	for _, c := range p.subs.Timeline(sub.ID, sub.Changes) {
		if c.Plan != "" {
			return c.At, true
		}
	}
	return time.Time{}, false
}

// MeterEntitlement is a meter's entitlement under the plan in force, with
// what evaluating it needs of the meter's price.
type MeterEntitlement struct {
	Meter       string
	Plan        string
	Currency    string
	Entitlement *Entitlement
	// FreeAllowance is the meter's free units a period (AllowanceThresholds).
	FreeAllowance decimal.Decimal
	// PerEvent is set when the meter is priced per event: a count of
	// units alone cannot be priced (an amount limit checks units only
	// against what was charged).
	PerEvent bool
}

// HasEntitlements reports whether some plan sets an entitlement; without
// one, no usage needs watching.
func (p *Pricing) HasEntitlements() bool { return p.catalog.HasEntitlements() }

// HasGrants reports whether some plan limits a meter by prepaid grants;
// without one, grant events have nothing to top up.
func (p *Pricing) HasGrants() bool { return p.catalog.HasGrants() }

// GrantsLimit reports whether some plan limits meter by grants; a grant
// of another meter has nothing to top up.
func (p *Pricing) GrantsLimit(meter string) bool { return p.catalog.GrantsLimit(meter) }

// Entitlement returns the entitlement of meter in the plan pricing sub at
// t; ok is false when there is none (or no plan).
func (p *Pricing) Entitlement(sub Subscriber, meter string, t time.Time) (MeterEntitlement, bool) {
	plan, err := p.plan(sub, t)
	if err != nil {
		return MeterEntitlement{}, false
	}
	price, ok := plan.Meters[meter]
	if !ok || price.Entitlement == nil {
		return MeterEntitlement{}, false
	}
	return meterEntitlement(plan, meter, &price), true
}

// meterEntitlement is the entitlement price sets on meter in plan.
func meterEntitlement(plan *Plan, meter string, price *Price) MeterEntitlement {
	return MeterEntitlement{Meter: meter, Plan: plan.ID, Currency: plan.Currency, Entitlement: price.Entitlement,
		FreeAllowance: price.FreeAllowance, PerEvent: price.PerEvent()}
}

// Entitlements returns the entitlements of the plan pricing sub at t, by
// meter name; none when sub has no plan then.
func (p *Pricing) Entitlements(sub Subscriber, t time.Time) []MeterEntitlement {
	plan, err := p.plan(sub, t)
	if err != nil {
		return nil
	}
	return planEntitlements(plan)
}

// PlanEntitlements returns the entitlements of the version of plan id in
// force at t, by meter name; none for an unknown plan.
func (p *Pricing) PlanEntitlements(id string, t time.Time) []MeterEntitlement {
	plan, err := p.catalog.Plan(id, t)
	if err != nil {
		return nil
	}
	return planEntitlements(plan)
}

func planEntitlements(plan *Plan) []MeterEntitlement {
	var out []MeterEntitlement
	for _, name := range plan.MeterNames() {
		if price := plan.Meters[name]; price.Entitlement != nil {
			out = append(out, meterEntitlement(plan, name, &price))
		}
	}
	return out
}

// PlanAt returns the id of the plan pricing sub at t (its subscription's,
// or the default plan); ok is false when none does.
func (p *Pricing) PlanAt(sub Subscriber, t time.Time) (id string, ok bool) {
	plan, err := p.plan(sub, t)
	if err != nil {
		return "", false
	}
	return plan.ID, true
}
