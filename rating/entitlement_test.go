package rating

import (
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func entitlementPlan(entitlement string) string {
	return `
id: p
currency: EUR
meters:
  sms:
    model: per_unit
    unitPrice: "0.1"
    freeAllowance: "10"
    entitlement: ` + entitlement + "\n"
}

// TestEntitlementErrorsNameTheField: bad entitlements fail to parse with
// the plan, the field and the problem.
func TestEntitlementErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ entitlement, want string }{
		{`{limit: "-5"}`, `plan p: meters.sms.entitlement.limit: -5 must be positive`},
		{`{}`, `meters.sms.entitlement.limit: 0 must be positive`},
		{`{limit: "5", of: calls}`, `meters.sms.entitlement.of: "calls" is none of units, amount, grants, grant_amount`},
		{`{of: grants, thresholds: [80, 150]}`, `meters.sms.entitlement.thresholds[1].percent: 150 is over 100; grants are drawn down to 0`},
		{`{limit: "5", of: grants}`, `meters.sms.entitlement.limit: 5 is set, but with of: grants the customer's grants are the limit; drop limit`},
		{`{limit: "5", enforcement: strict}`, `meters.sms.entitlement.enforcement: "strict" is neither hard nor soft`},
		{`{limit: "5", thresholds: [80, 50]}`, `meters.sms.entitlement.thresholds[1].percent: 50 does not follow 80`},
		{`{limit: "5", thresholds: [80, 80]}`, `thresholds[1].percent: 80 does not follow 80`},
		{`{limit: "5", thresholds: [0]}`, `thresholds[0].percent: 0 is outside (0, 1000]`},
		{`{limit: "5", thresholds: [1001]}`, `thresholds[0].percent: 1001 is outside (0, 1000]`},
		{`{limit: "5", thresholds: [{percent: 90, action: bill}]}`, `thresholds[0].action: "bill" is none of notify, throttle, suspend`},
		{`{limit: "5", thresholds: [{percent: 90, when: now}]}`, `field when not found in threshold (percent, action)`},
		{`{limit: "5", allowanceThresholds: [120, 100]}`, `allowanceThresholds[1].percent: 100 does not follow 120`},
		{`{limit: "5", cap: 3}`, `field cap not found`},
	} {
		_, err := Parse([]byte(entitlementPlan(c.entitlement)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("entitlement %s: %v, want an error with %q", c.entitlement, err, c.want)
		}
	}
	noAllowance := strings.Replace(entitlementPlan(`{limit: "5", allowanceThresholds: [100]}`), `freeAllowance: "10"`, "", 1)
	if _, err := Parse([]byte(noAllowance)); err == nil || !strings.Contains(err.Error(), "no freeAllowance") {
		t.Errorf("allowance thresholds without an allowance: %v", err)
	}
}

// TestEntitlementStatusAtTheBoundaries: a threshold is crossed at exactly
// its share, not a unit before; a hard limit allows up to the limit and
// nothing once suspended; a soft one allows everything.
func TestEntitlementStatusAtTheBoundaries(t *testing.T) {
	p, err := Parse([]byte(entitlementPlan(`{limit: "200", thresholds: [50, {percent: 100, action: suspend}], allowanceThresholds: [100]}`)))
	if err != nil {
		t.Fatal(err)
	}
	e := p.Meters["sms"].Entitlement
	d := decimal.RequireFromString
	for _, c := range []struct {
		used, units string
		state       EntitlementState
		crossed     int
		allowance   string
		remaining   string
	}{
		{"0", "0", StateOK, 0, "0", "200"},
		{"99.99", "9.99", StateOK, 0, "99.9", "100.01"},
		{"100", "10", StateWarning, 1, "100", "100"},
		{"199.999", "10", StateWarning, 1, "100", "0.001"},
		{"200", "10", StateSuspended, 2, "100", "0"},
		{"250", "25", StateSuspended, 2, "250", "0"},
	} {
		st := e.Status(d(c.used), d(c.units), d("10"))
		if st.State != c.state || len(st.Crossed) != c.crossed || st.AllowanceUsed == nil || !st.AllowanceUsed.Equal(d(c.allowance)) || !st.Remaining.Equal(d(c.remaining)) {
			t.Errorf("used %s (units %s): %+v, want state %s with %d crossed, allowance %s%%, %s remaining", c.used, c.units, st, c.state, c.crossed, c.allowance, c.remaining)
		}
		if got := len(st.AllowanceCrossed) == 1; got != d(c.units).GreaterThanOrEqual(d("10")) {
			t.Errorf("units %s of an allowance of 10: allowance 100%% crossed %v", c.units, got)
		}
	}
	for _, c := range []struct {
		used, more string
		allowed    bool
	}{{"0", "200", true}, {"0", "200.001", false}, {"150", "50", true}, {"150", "51", false}, {"200", "0", false}} {
		if got := e.Allows(d(c.used), d(c.more)); got != c.allowed {
			t.Errorf("hard: %s used, %s more: allowed %v, want %v", c.used, c.more, got, c.allowed)
		}
	}
	soft, err := Parse([]byte(entitlementPlan(`{limit: "200", enforcement: soft}`)))
	if err != nil {
		t.Fatal(err)
	}
	se := soft.Meters["sms"].Entitlement
	if !se.Allows(d("300"), d("1000")) || se.Thresholds[0].Action != ActionNotify || se.Status(d("200"), d("0"), d("10")).State != StateWarning {
		t.Errorf("soft limit: %+v", se)
	}
	if hard := e; hard.Of != LimitUnits || hard.Enforcement != Hard {
		t.Errorf("defaults: of %q, enforcement %q, want units and hard", hard.Of, hard.Enforcement)
	}
}
