package engine

import (
	"errors"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// Rater prices usage (rating.Pricing is the one Tally runs). It must be
// safe for concurrent use by all shards and deterministic, so that replay
// reproduces the same rows.
type Rater interface {
	// RateEvent decides how one event is priced before it is aggregated
	// (ev.Units is what it adds to its meter): windowStart is the start of
	// its window, whose plan prices it. When the price is per event
	// (connect fees, per-event bounds, time bands, destinations) the
	// rating carries the event's own charge and rate. Usage that cannot be
	// priced is refused with an error wrapping rating.ErrNoSubscription or
	// rating.ErrUnpriced (or another rating error): such records are
	// dead-lettered, never aggregated for free.
	RateEvent(sub rating.Subscriber, meter string, windowStart time.Time, ev rating.Usage) (rating.EventRating, error)
	// Increment is the charge of moving the billing period's charged-to-date
	// quantity from before to after (rounded cumulative charge after minus
	// before, so that increments add up to the period's charge), under the
	// plan in force at windowStart.
	Increment(sub rating.Subscriber, meter string, windowStart time.Time, before, after decimal.Decimal) (rating.Charge, error)
	// IncrementEvents is Increment for a window of a per-event price:
	// before and after are the period's sums of event charges; usage is the
	// window's, to explain the charge.
	IncrementEvents(sub rating.Subscriber, meter string, windowStart time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error)
	// PeriodFee is what a closed billing period of the meter adds on top of
	// its usage (flat fee, minimum-commitment true-up given the usage
	// charged), prorated over the plans in force during the period; ok is
	// false when they have no period fee for the meter.
	PeriodFee(sub rating.Subscriber, meter string, periodStart, periodEnd time.Time, usageCharged decimal.Decimal) (charge rating.Charge, ok bool, err error)
	// Currency is the currency the meter of sub is priced in at t; ok is
	// false when no plan prices it then.
	Currency(sub rating.Subscriber, meter string, t time.Time) (currency string, ok bool)
}

// SubscriptionRules is what the engine needs to apply subscription events
// and to charge period fees of subscribers without usage. A Rater that does
// not implement it has no subscriptions: such events are dead-lettered.
type SubscriptionRules interface {
	// CheckPlan reports whether a subscription event may name plan id.
	CheckPlan(id string) error
	// Subscribers lists the customers with configured subscriptions.
	Subscribers() []string
	// FeeMeters lists the meters whose period fees (flat fee, commitment)
	// sub owes for the billing period, usage or not.
	FeeMeters(sub rating.Subscriber, periodStart, periodEnd time.Time) []string
	// SubscribedFrom is when sub was first on a plan (configured or by its
	// events); ok is false if never.
	SubscribedFrom(sub rating.Subscriber) (at time.Time, ok bool)
	// PlanCurrency is the currency of plan id's version in force at t;
	// ok is false when none is.
	PlanCurrency(id string, t time.Time) (currency string, ok bool)
	// PlanAt is the plan pricing sub at t; ok is false when none does.
	PlanAt(sub rating.Subscriber, t time.Time) (id string, ok bool)
	// PeriodCurrencies lists the currencies of the plans sub is subscribed
	// to during the period.
	PeriodCurrencies(sub rating.Subscriber, periodStart, periodEnd time.Time) []string
	// ConfiguredChanges lists when customer's configured subscriptions
	// start and end.
	ConfiguredChanges(customer string) []time.Time
}

// rateReason is the dead-letter reason of a RateEvent error.
func rateReason(err error) Reason {
	switch {
	case errors.Is(err, rating.ErrNoSubscription):
		return ReasonNoSubscription
	case errors.Is(err, rating.ErrUnpriced):
		return ReasonUnpriced
	default:
		return ReasonRating
	}
}

// RateDim is the dimension that carries an event's rate in group keys.
const RateDim = "rate"

// PeriodFeeGroup is the group key of period fee rows: a period's flat fee
// and commitment true-up, one row per (meter, customer, period). Real group
// keys always contain '=', so it cannot collide with one.
const PeriodFeeGroup = "@period"
