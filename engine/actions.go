package engine

import (
	"context"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// ProvisioningAction is what crossing an entitlement's threshold calls
// for (docs/provisioning.md). ID is its idempotency key: the same crossing
// has the same ID in every run and replay, and a consumer that saw it
// ignores it again (delivery is at least once, like rows).
type ProvisioningAction struct {
	ID       string        `json:"id"`
	Action   rating.Action `json:"action"`
	Customer string        `json:"customer"`
	Meter    string        `json:"meter"`
	Plan     string        `json:"plan"`
	// Of is what Threshold is a share of: limit or allowance.
	Of        string          `json:"of"`
	Threshold decimal.Decimal `json:"threshold_percent"`
	// Limit and Used are in the limit's basis (Basis): units, or the amount
	// charged in Currency. For an allowance threshold Limit is the free
	// allowance and Used the units.
	Limit       decimal.Decimal   `json:"limit"`
	Used        decimal.Decimal   `json:"used"`
	Basis       rating.LimitBasis `json:"basis"`
	Currency    string            `json:"currency,omitempty"`
	PeriodStart time.Time         `json:"period_start"`
	PeriodEnd   time.Time         `json:"period_end"`
	// At is the event time of the usage that crossed: the record's time,
	// or for an amount limit the start of the window whose charge crossed.
	At time.Time `json:"at"`
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
	limitHere := (me.Entitlement.Of == rating.LimitAmount) == amount
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
		act := ProvisioningAction{
			ID:       customer + "|" + m.Name + "|" + start.Format(time.RFC3339) + "|" + c.Of + "|" + c.Threshold.Percent.String(),
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
		s.pending.actions = append(s.pending.actions, act)
	}
}
