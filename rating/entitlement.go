package rating

import (
	"fmt"

	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// Entitlement limits how much of a meter a subscriber may use in a billing
// period, and names the shares of it that call for an action. Usage is
// never refused by the engine (a record is a fact); the limit is what the
// entitlement check answers (actions on crossings: docs/provisioning.md).
//
// In a plan:
//
//	meters:
//	  sms:
//	    model: per_unit
//	    unitPrice: "0.05"
//	    freeAllowance: "100"
//	    entitlement:
//	      limit: "1000"            # units a billing period (of: amount counts money)
//	      enforcement: hard        # hard (default): past the limit, not allowed; soft: allowed, reported
//	      thresholds: [50, 80, {percent: 100, action: suspend}]
//	      allowanceThresholds: [100]   # % of freeAllowance: tell them when the free units are gone
type Entitlement struct {
	// Limit is the most a billing period may use, counted in Of. Positive;
	// absent with of: grants.
	Limit decimal.Decimal `yaml:"limit" json:"limit"`
	// Of is what Limit counts: units of the meter (the default), or amount:
	// the money its usage was charged so far in the period (rows emitted),
	// in the plan's currency; or grants: the customer's prepaid grants of
	// the meter are the limit (units that usage draws down until they
	// expire, topped up by grant.created events; see WithLimit), not the
	// billing period.
	Of LimitBasis `yaml:"of" json:"of"`
	// Enforcement is hard (the default: the check refuses what would pass
	// the limit) or soft (allowed, and reported as over the limit).
	Enforcement Enforcement `yaml:"enforcement" json:"enforcement"`
	// Thresholds are shares of Limit in percent, ascending, each with the
	// action its crossing calls for. Default: 100% with suspend (hard) or
	// notify (soft).
	Thresholds []Threshold `yaml:"thresholds" json:"thresholds"`
	// AllowanceThresholds are shares of the meter's freeAllowance in
	// percent, ascending (notify by default): e.g. 100 tells a customer
	// the free units are used up.
	AllowanceThresholds []Threshold `yaml:"allowanceThresholds" json:"allowanceThresholds,omitempty"`
}

// LimitBasis is what an entitlement's limit counts.
type LimitBasis string

const (
	LimitUnits  LimitBasis = "units"
	LimitAmount LimitBasis = "amount"
	LimitGrants LimitBasis = "grants"
	// LimitGrantAmount limits by money grants, in the plan's currency,
	// that the usage's charge draws down.
	LimitGrantAmount LimitBasis = "grant_amount"
)

// Grants reports whether b limits by the customer's grants (of units or
// of money).
func (b LimitBasis) Grants() bool { return b == LimitGrants || b == LimitGrantAmount }

// Enforcement says whether usage past a limit is allowed.
type Enforcement string

const (
	Hard Enforcement = "hard"
	Soft Enforcement = "soft"
)

// Action is what crossing a threshold calls for.
type Action string

const (
	ActionNotify   Action = "notify"
	ActionThrottle Action = "throttle"
	ActionSuspend  Action = "suspend"
	// ActionResume follows a throttle or suspend when the next billing
	// period starts (or a grant tops the balance up).
	ActionResume Action = "resume"
	// Lifecycle actions follow subscription events.
	ActionActivate     Action = "activate"
	ActionUpdateLimits Action = "update_limits"
	ActionDeactivate   Action = "deactivate"
)

// Threshold is a share of a limit (or of the free allowance), in percent,
// and the action crossing it calls for. In a plan it is a number (percent,
// action notify) or a mapping {percent: 100, action: suspend}.
type Threshold struct {
	Percent decimal.Decimal `yaml:"percent" json:"percent"`
	Action  Action          `yaml:"action" json:"action"`
	// at is the usage that reaches it: Percent of the limit (or of the
	// allowance), set by validation, so that watching usage compares
	// without multiplying.
	at decimal.Decimal
}

// UnmarshalYAML reads a threshold as a number or a mapping.
func (t *Threshold) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind == yaml.ScalarNode {
		t.Action = ActionNotify
		return node.Decode(&t.Percent)
	}
	if node.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a threshold is a percent such as 80 or a mapping such as {percent: 100, action: suspend}", node.Line)
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		key, value := node.Content[i], node.Content[i+1]
		var err error
		switch key.Value {
		case "percent":
			err = value.Decode(&t.Percent)
		case "action":
			err = value.Decode(&t.Action)
		default:
			return fmt.Errorf("line %d: field %s not found in threshold (percent, action)", key.Line, key.Value)
		}
		if err != nil {
			return err
		}
	}
	if t.Action == "" {
		t.Action = ActionNotify
	}
	return nil
}

// maxThresholdPercent bounds a threshold: a soft limit may be watched past
// itself (e.g. 150%), but not without end.
const maxThresholdPercent = 1000

// validate checks e and sets its defaults; where names "plan P:
// meters.M.entitlement", price is the meter's.
func (e *Entitlement) validate(where string, price *Price) error {
	switch e.Of {
	case "":
		e.Of = LimitUnits
	case LimitUnits, LimitAmount, LimitGrants, LimitGrantAmount:
	default:
		return fmt.Errorf("%s.of: %q is none of units, amount, grants, grant_amount", where, e.Of)
	}
	switch e.Enforcement {
	case "":
		e.Enforcement = Hard
	case Hard, Soft:
	default:
		return fmt.Errorf("%s.enforcement: %q is neither hard nor soft", where, e.Enforcement)
	}
	switch {
	case e.Of.Grants() && !e.Limit.IsZero():
		return fmt.Errorf("%s.limit: %s is set, but with of: %s the customer's grants are the limit; drop limit", where, e.Limit, e.Of)
	case !e.Of.Grants() && !e.Limit.IsPositive():
		return fmt.Errorf("%s.limit: %s must be positive (the most a billing period may use, in %s)", where, e.Limit, e.Of)
	}
	if len(e.Thresholds) == 0 {
		action := ActionSuspend
		if e.Enforcement == Soft {
			action = ActionNotify
		}
		e.Thresholds = []Threshold{{Percent: decimal.NewFromInt(100), Action: action}}
	}
	if err := validateThresholds(where+".thresholds", e.Thresholds, e.Limit); err != nil {
		return err
	}
	if e.Of.Grants() {
		for i := range e.Thresholds {
			if e.Thresholds[i].Percent.GreaterThan(decimal.NewFromInt(100)) {
				return fmt.Errorf("%s.thresholds[%d].percent: %s is over 100; grants are drawn down to 0 and no further (usage past them is overage)", where, i, e.Thresholds[i].Percent)
			}
			e.Thresholds[i].at = decimal.Zero // shares of a limit that moves: see WithLimit
		}
	}
	if len(e.AllowanceThresholds) > 0 {
		if !price.FreeAllowance.IsPositive() {
			return fmt.Errorf("%s.allowanceThresholds: the meter has no freeAllowance to take shares of; set freeAllowance or drop them", where)
		}
		if err := validateThresholds(where+".allowanceThresholds", e.AllowanceThresholds, price.FreeAllowance); err != nil {
			return err
		}
	}
	return nil
}

// validateThresholds checks ts and sets the usage at which each is
// reached, of base (exact: a share in percent of a decimal).
func validateThresholds(where string, ts []Threshold, base decimal.Decimal) error {
	for i := range ts {
		t := &ts[i]
		t.at = base.Mul(t.Percent).Shift(-2)
		at := fmt.Sprintf("%s[%d]", where, i)
		if !t.Percent.IsPositive() || t.Percent.GreaterThan(decimal.NewFromInt(maxThresholdPercent)) {
			return fmt.Errorf("%s.percent: %s is outside (0, %d]; write 80%% as 80", at, t.Percent, maxThresholdPercent)
		}
		if i > 0 && !t.Percent.GreaterThan(ts[i-1].Percent) {
			return fmt.Errorf("%s.percent: %s does not follow %s; thresholds go in increasing order", at, t.Percent, ts[i-1].Percent)
		}
		switch t.Action {
		case ActionNotify, ActionThrottle, ActionSuspend:
		default:
			return fmt.Errorf("%s.action: %q is none of notify, throttle, suspend", at, t.Action)
		}
	}
	return nil
}

// EntitlementState is where a billing period stands against its limit: ok
// (no threshold of the limit crossed), warning (a notify threshold
// crossed), throttled or suspended (the action of the highest threshold
// crossed). A soft limit is never suspended by its state alone: it says
// what its thresholds say.
type EntitlementState string

const (
	StateOK        EntitlementState = "ok"
	StateWarning   EntitlementState = "warning"
	StateThrottled EntitlementState = "throttled"
	StateSuspended EntitlementState = "suspended"
)

// EntitlementStatus is an entitlement evaluated against a period's usage.
type EntitlementStatus struct {
	Limit       decimal.Decimal `json:"limit"`
	Of          LimitBasis      `json:"of"`
	Enforcement Enforcement     `json:"enforcement"`
	Used        decimal.Decimal `json:"used"`
	// Remaining is Limit - Used, never below 0.
	Remaining decimal.Decimal  `json:"remaining"`
	State     EntitlementState `json:"state"`
	// Crossed lists the thresholds of the limit that Used has reached.
	Crossed []Threshold `json:"crossed"`
	// AllowanceUsed, with AllowanceThresholds, is the share of the free
	// allowance used, in percent, and AllowanceCrossed the thresholds of
	// it reached.
	AllowanceUsed    *decimal.Decimal `json:"allowance_used_percent,omitempty"`
	AllowanceCrossed []Threshold      `json:"allowance_crossed,omitempty"`
}

// Status evaluates e against used, what the period used so far in e.Of;
// allowance is the meter's free allowance and units the period's units
// (for AllowanceThresholds, which count units whatever Of is).
func (e *Entitlement) Status(used, units, allowance decimal.Decimal) EntitlementStatus {
	st := EntitlementStatus{Limit: e.Limit, Of: e.Of, Enforcement: e.Enforcement, Used: used,
		Remaining: decimal.Max(decimal.Zero, e.Limit.Sub(used)), State: StateOK, Crossed: []Threshold{}}
	for _, t := range e.Thresholds {
		if t.reachedBy(used, e.Limit) {
			st.Crossed = append(st.Crossed, t)
			st.State = stateOf(t.Action)
		}
	}
	if len(e.AllowanceThresholds) > 0 && allowance.IsPositive() {
		share := units.Mul(decimal.NewFromInt(100)).DivRound(allowance, 2)
		st.AllowanceUsed = &share
		st.AllowanceCrossed = []Threshold{}
		for _, t := range e.AllowanceThresholds {
			if t.reachedBy(units, allowance) {
				st.AllowanceCrossed = append(st.AllowanceCrossed, t)
			}
		}
	}
	return st
}

// Allows reports whether more, in e.Of, may be used on top of used: a
// hard limit allows up to the limit and nothing while suspended; a soft
// one allows everything.
func (e *Entitlement) Allows(used, more decimal.Decimal) bool {
	if e.Enforcement == Soft {
		return true
	}
	st := e.Status(used, decimal.Zero, decimal.Zero)
	return st.State != StateSuspended && !used.Add(more).GreaterThan(e.Limit)
}

// reachedBy reports whether v reaches t, a share of base: by the usage
// validation worked out (no product to allocate), or, for a threshold
// built without validation, by reached.
func (t Threshold) reachedBy(v, base decimal.Decimal) bool {
	if t.at.IsZero() { // a positive share of a positive base is never 0
		return reached(v, base, t.Percent)
	}
	return v.Cmp(t.at) >= 0
}

// reached reports whether used is at least percent of limit (exact: used
// × 100 >= limit × percent).
func reached(used, limit, percent decimal.Decimal) bool {
	return !used.Mul(decimal.NewFromInt(100)).LessThan(limit.Mul(percent))
}

func stateOf(a Action) EntitlementState {
	switch a {
	case ActionSuspend:
		return StateSuspended
	case ActionThrottle:
		return StateThrottled
	default:
		return StateWarning
	}
}

// Crossing is a threshold a period's usage reached.
type Crossing struct {
	// Of is what the threshold is a share of: limit or allowance.
	Of        string
	Threshold Threshold
}

// Crossed returns, in increasing order, the thresholds that used (in
// e.Of, against the limit) and units (against allowance) reach above the
// shares already announced, and the shares announced with them. A
// threshold at or under an announced share is never returned again, also
// when usage fell under it and rose again: each is announced once a
// period.
func (e *Entitlement) Crossed(used, units, allowance, announced, allowanceAnnounced decimal.Decimal) (out []Crossing, newAnnounced, newAllowanceAnnounced decimal.Decimal) {
	newAnnounced, newAllowanceAnnounced = announced, allowanceAnnounced
	for _, t := range e.Thresholds {
		if t.Percent.GreaterThan(announced) && t.reachedBy(used, e.Limit) {
			out = append(out, Crossing{Of: "limit", Threshold: t})
			newAnnounced = t.Percent
		}
	}
	if allowance.IsPositive() {
		for _, t := range e.AllowanceThresholds {
			if t.Percent.GreaterThan(allowanceAnnounced) && t.reachedBy(units, allowance) {
				out = append(out, Crossing{Of: "allowance", Threshold: t})
				newAllowanceAnnounced = t.Percent
			}
		}
	}
	return out, newAnnounced, newAllowanceAnnounced
}

// WithLimit is e (of: grants) with limit in place of its limit: the
// units of the customer's grants in force. Its thresholds are shares of
// limit, worked out when compared; with no grant (limit 0) every one is
// reached: a prepaid meter without a balance is used up.
func (e *Entitlement) WithLimit(limit decimal.Decimal) *Entitlement {
	c := *e
	c.Limit = limit
	return &c
}
