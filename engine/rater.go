package engine

import (
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// Rater prices usage. It must be safe for concurrent use by all shards and
// deterministic, so that replay reproduces the same rows.
type Rater interface {
	// RateEvent decides how one event is priced before it is aggregated
	// (ev.Units is what it adds to its meter): windowStart is the start of
	// its window, whose plan prices it. When the
	// price is per event (connect fees, per-event bounds, time bands,
	// destinations) the rating carries the event's own charge and rate.
	// When the usage cannot be priced, the reason (ReasonNoSubscription,
	// ReasonUnpriced) and why: such records are dead-lettered, never
	// aggregated for free.
	RateEvent(sub Subscriber, meter string, windowStart time.Time, ev *Event) (EventRating, Reason, error)
	// Increment is the charge of moving the billing period's charged-to-date
	// quantity from before to after (rounded cumulative charge after minus
	// before, so that increments add up to the period's charge), under the
	// plan in force at windowStart.
	Increment(sub Subscriber, meter string, windowStart time.Time, before, after decimal.Decimal) (rating.Charge, error)
	// IncrementEvents is Increment for a window of a per-event price:
	// before and after are the period's sums of event charges; usage is the
	// window's, to explain the charge.
	IncrementEvents(sub Subscriber, meter string, windowStart time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error)
	// PeriodFee is what a closed billing period of the meter adds on top of
	// its usage (flat fee, minimum-commitment true-up given the usage
	// charged), prorated over the plans in force during the period; ok is
	// false when they have no period fee for the meter.
	PeriodFee(sub Subscriber, meter string, periodStart, periodEnd time.Time, usageCharged decimal.Decimal) (charge rating.Charge, ok bool, err error)
}

// Subscriber is a customer as a Rater sees it: its id and the subscription
// changes its subscription events made, which apply on top of its
// configured subscriptions (rating.Subscriptions.Timeline).
type Subscriber struct {
	ID      string
	Changes []rating.Change
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
	FeeMeters(sub Subscriber, periodStart, periodEnd time.Time) []string
	// SubscribedFrom is when sub was first on a plan (configured or by its
	// events); ok is false if never.
	SubscribedFrom(sub Subscriber) (at time.Time, ok bool)
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

// RateDim is the dimension that carries an event's rate in group keys.
const RateDim = "rate"

// PeriodFeeGroup is the group key of period fee rows: a period's flat fee
// and commitment true-up, one row per (meter, customer, period). Real group
// keys always contain '=', so it cannot collide with one.
const PeriodFeeGroup = "@period"
