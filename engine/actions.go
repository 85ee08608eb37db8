package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// ProvisioningAction is what crossing an entitlement's threshold calls
// for (docs/provisioning.md). ID is its idempotency key: the same crossing
// has the same ID in every run and replay, and a consumer that saw it
// ignores it again (delivery is at least once, like rows).
//
// Three kinds share the type. A crossing (notify, throttle, suspend) names
// its meter, threshold, limit and usage. A resume names the meter and the
// new billing period. A lifecycle action (activate, update_limits,
// deactivate) names the plan and, but for deactivate, its limits; fields
// that do not apply are left out of the JSON.
type ProvisioningAction struct {
	ID       string        `json:"id"`
	Action   rating.Action `json:"action"`
	Customer string        `json:"customer"`
	Meter    string        `json:"meter,omitempty"`
	Plan     string        `json:"plan,omitempty"`
	// Of is what Threshold is a share of: limit or allowance.
	Of        string          `json:"of,omitempty"`
	Threshold decimal.Decimal `json:"threshold_percent,omitzero"`
	// Limit and Used are in the limit's basis (Basis): units, or the amount
	// charged in Currency. For an allowance threshold Limit is the free
	// allowance and Used the units.
	Limit       decimal.Decimal   `json:"limit,omitzero"`
	Used        decimal.Decimal   `json:"used,omitzero"`
	Basis       rating.LimitBasis `json:"basis,omitempty"`
	Currency    string            `json:"currency,omitempty"`
	PeriodStart time.Time         `json:"period_start,omitzero"`
	PeriodEnd   time.Time         `json:"period_end,omitzero"`
	// Limits are the plan's entitlements (activate, update_limits).
	Limits []ActionLimit `json:"limits,omitempty"`
	// Event is the subscription event of a lifecycle action.
	Event EventRef `json:"event,omitzero"`
	// At is the event time of what called for the action: the record that
	// crossed (for an amount limit the start of the window whose charge
	// crossed), the start of the period resumed, the subscription event.
	At time.Time `json:"at"`
}

// EventRef names an event by its dedup identity.
type EventRef struct {
	Source string `json:"source,omitempty"`
	ID     string `json:"id"`
}

// ActionLimit is one entitlement of a plan, as lifecycle actions carry it.
type ActionLimit struct {
	Meter       string             `json:"meter"`
	Limit       decimal.Decimal    `json:"limit,omitzero"` // none with of: grants
	Of          rating.LimitBasis  `json:"of"`
	Enforcement rating.Enforcement `json:"enforcement"`
}

// ActionSink receives provisioning actions, at least once (see
// ProvisioningAction.ID).
type ActionSink interface {
	Name() string
	WriteActions(ctx context.Context, actions []ProvisioningAction) error
}

// watchesLimits reports whether crossings of entitlement thresholds are
// announced: some plan sets an entitlement, and an ActionSink takes the
// actions (without one, their outbox stream would never be trimmed).
func (e *Engine) watchesLimits() bool {
	rules, ok := e.rater.(EntitlementRules)
	return ok && rules.HasEntitlements() && len(e.cfg.ActionSinks) > 0
}

// checkLimits announces the thresholds of customer's entitlement on p's
// meter that p's usage reached since the last announcement (one action
// each, once a period; see rating.Entitlement.Crossed). amount says which
// basis moved: units (apply, after each record) or amount (emit, after a
// window's charge). windowStartNs picks the plan, as for pricing; atNs is
// the event time the action carries.
//
// Invariant (exactly once): the announced shares live in p's durable
// state, and p is marked dirty with the action queued, so the barrier puts
// both in one checkpoint. A replay after a crash reaches the same
// crossings in the same record order and announces what the checkpoint
// did not hold, once.
func (s *shard) checkLimits(p *window, m *meterSpec, customer string, windowStartNs, atNs int64, amount bool) {
	me, ok := s.entitlement(customer, m.Name, windowStartNs)
	if !ok {
		return
	}
	// apply watches a units limit and the allowance (units); emit an
	// amount limit.
	limitHere := (me.Entitlement.Of == rating.LimitAmount) == amount && !me.Entitlement.Of.Grants() // grants: settleBalance
	allowanceHere := !amount && len(me.Entitlement.AllowanceThresholds) > 0
	if !limitHere && !allowanceHere {
		return
	}
	used, units := periodUsage(p, m, me.Entitlement.Of)
	var announced, allowanceAnnounced decimal.Decimal
	if p.x != nil {
		announced, allowanceAnnounced = p.x.announced, p.x.allowanceAnnounced
	}
	watchUsed, allowance := decimal.Zero, decimal.Zero // zero: nothing reached
	if limitHere {
		watchUsed = used
	}
	if allowanceHere {
		allowance = me.FreeAllowance
	}
	crossed, a, aa := me.Entitlement.Crossed(watchUsed, units, allowance, announced, allowanceAnnounced)
	if len(crossed) == 0 {
		return
	}
	x := p.extra()
	x.announced, x.allowanceAnnounced = a, aa
	s.markDirty(p)
	start := time.Unix(0, p.key.startNs).UTC()
	for _, c := range crossed {
		// A period that ends throttled or suspended is resumed when it
		// closes (resumeClosed); one blocked by a late record after it
		// closed, at the next barrier.
		if c.Of == "limit" && c.Threshold.Action != rating.ActionNotify && !x.blocked {
			x.blocked = true
			if s.closedEnds[p.periodEndNs] {
				s.resumeDue = append(s.resumeDue, p)
			}
		}
		act := ProvisioningAction{
			ID:       periodActionID(customer, m.Name, start, c.Of+"|"+c.Threshold.Percent.String()),
			Action:   c.Threshold.Action,
			Customer: customer, Meter: m.Name, Plan: me.Plan, Of: c.Of, Threshold: c.Threshold.Percent,
			Limit: me.Entitlement.Limit, Used: used, Basis: me.Entitlement.Of,
			PeriodStart: start, PeriodEnd: time.Unix(0, p.endNs).UTC(), At: time.Unix(0, atNs).UTC(),
		}
		if me.Entitlement.Of == rating.LimitAmount {
			act.Currency = me.Currency
		}
		if c.Of == "allowance" {
			act.Limit, act.Used, act.Basis, act.Currency = me.FreeAllowance, units, rating.LimitUnits, ""
		}
		s.queueAction(act)
	}
}

// periodActionID is the id of an action of customer's billing period
// starting at start on meter: customer|meter|start|what. Read from the
// right, it stays unambiguous whatever the customer id holds.
func periodActionID(customer, meter string, start time.Time, what string) string {
	return customer + "|" + meter + "|" + start.Format(time.RFC3339) + "|" + what
}

// resumeClosed announces resume for period p, which has just closed
// (chargeFees), if a throttle or suspend of its limit was announced: the
// next billing period starts with nothing used. A period blocked only
// after it closed (a late record) is resumed at the next barrier, so that
// whether a period is resumed does not depend on where barriers fell. Not
// when the customer has no plan in the next period (cancelled without a
// default plan: deactivate said so).
//
// Invariant (exactly once): p.x.resumed is durable and set with the action
// queued, in one checkpoint, like the announced shares; a period closed
// again after recovery (the closed ends are not kept) finds it set.
func (s *shard) resumeClosed(p *window) {
	if p.x == nil || !p.x.blocked || p.x.resumed {
		return
	}
	p.x.resumed = true
	s.markDirty(p)
	// The next period may already be throttled or suspended by its own
	// usage (the records before this barrier, or a late record of p after
	// the next one crossed): a resume now would undo that. Such a period
	// gets no resume; a resume thus never follows a throttle or suspend of
	// the period it names.
	nextKey := windowKey{meter: p.key.meter, customer: p.key.customer, startNs: p.endNs, period: true}
	if next := s.periods[nextKey]; next != nil && next.x != nil && next.x.blocked {
		return
	}
	m := s.meter(p)
	customer := s.names.str(p.key.customer)
	rules, ok := s.rater.(EntitlementRules)
	if !ok {
		return
	}
	plan, ok := rules.PlanAt(s.subscriber(customer), time.Unix(0, p.endNs).UTC())
	if !ok {
		return
	}
	cust := s.customers.get(customer)
	startNs, endNs := billingPeriod(p.endNs, cust.loc, cust.anchorDay)
	start := time.Unix(0, startNs).UTC()
	act := ProvisioningAction{
		ID:     periodActionID(customer, m.Name, start, "resume"),
		Action: rating.ActionResume, Customer: customer, Meter: m.Name, Plan: plan,
		PeriodStart: start, PeriodEnd: time.Unix(0, endNs).UTC(), At: start,
	}
	if me, ok := s.entitlement(customer, m.Name, startNs); ok {
		act.Limit, act.Basis = me.Entitlement.Limit, me.Entitlement.Of
		if me.Entitlement.Of == rating.LimitAmount {
			act.Currency = me.Currency
		}
	}
	s.queueAction(act)
}

// lifecycleActionOf is the action a subscription event type announces.
func lifecycleActionOf(eventType string) (rating.Action, bool) {
	switch eventType {
	case SubscriptionCreated:
		return rating.ActionActivate, true
	case SubscriptionChanged:
		return rating.ActionUpdateLimits, true
	case SubscriptionCancelled:
		return rating.ActionDeactivate, true
	}
	return "", false
}

// lifecycleAction queues the action subscription event ev calls for:
// activate (created), update_limits (plan changed) or deactivate
// (cancelled), with the limits of the plan it puts the customer on.
// identity is the event's dedup identity, which names it in the action's
// id (hashed: an id of any characters, with or without a source, stays
// one field).
//
// Invariant (exactly once): called once per event, after the dedup check
// that remembers identity in the same checkpoint as the action; a replay
// after a crash before it applies the event, and announces, again.
func (s *shard) lifecycleAction(ev *Event, identity idHash) {
	action, ok := lifecycleActionOf(ev.Meter)
	if !ok {
		return
	}
	id := fmt.Sprintf("%x", identity)
	act := ProvisioningAction{
		ID:     ev.Customer + "|" + subscriptionMeter + "|" + id + "|" + string(action),
		Action: action, Customer: ev.Customer, Plan: ev.Plan, At: time.Unix(0, ev.TimeNs).UTC(),
		Event: EventRef{Source: ev.Source, ID: ev.ID},
	}
	if rules, ok := s.rater.(EntitlementRules); ok && ev.Plan != "" {
		for _, me := range rules.PlanEntitlements(ev.Plan, act.At) {
			act.Limits = append(act.Limits, ActionLimit{Meter: me.Meter, Limit: me.Entitlement.Limit,
				Of: me.Entitlement.Of, Enforcement: me.Entitlement.Enforcement})
		}
	}
	s.queueAction(act)
}

// actionCheckpointSpacing is how soon after the previous checkpoint a
// queued action has its own: an action leaves with the checkpoint after
// the record that caused it, so waiting for the regular interval (1 s by
// default) would make it that late; cutting at once would make a
// checkpoint per action under a stream of crossings.
const actionCheckpointSpacing = 200 * time.Millisecond

// queueAction queues act for the next checkpoint and, when it is the
// shard's first since the last barrier, asks the dispatcher for an early
// one (at most actionCheckpointSpacing after the previous).
//
// Invariant: a notice the buffer cannot take is dropped only while an
// unread one waits there; the dispatcher reads that one after this action
// was queued, so the checkpoint it causes holds the action. An action
// queued while the shard takes a barrier (a window's charge, a resume, a
// grant expiring, at close) is in that barrier's checkpoint and asks for
// none; the list is emptied by the same barrier, so the next action asks
// again.
func (s *shard) queueAction(act ProvisioningAction) {
	s.pending.actions = append(s.pending.actions, act)
	if len(s.pending.actions) == 1 && !s.inBarrier {
		select {
		case s.actionQueued <- struct{}{}:
		default:
		}
	}
}
