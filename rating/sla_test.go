package rating

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

func slaPlan(objectives string) string {
	return `
id: p
currency: EUR
rounding: {decimals: 2, mode: half_even}
meters:
  sms: {model: per_unit, unitPrice: "0.1"}
  voice: {model: per_unit, unitPrice: "0.01", flatFee: "5"}
sla:
` + objectives
}

// TestSLAErrorsNameTheField: bad objectives fail to parse with the plan,
// the objective, the field and the problem.
func TestSLAErrorsNameTheField(t *testing.T) {
	ok := `credits: [{below: "99.9", credit: "10"}]`
	for _, c := range []struct{ objectives, want string }{
		{`  - {kind: availability, target: "99.9", ` + ok + `}`, `plan p: sla[0].name: missing`},
		{`  - {name: a, kind: uptime, target: "99.9", ` + ok + `}`, `plan p: sla a.kind: "uptime" is none of availability, latency, error_rate, resolution`},
		{`  - {name: a, kind: availability, target: "100.1", ` + ok + `}`, `sla a.target: 100.1 is outside 0..100`},
		{`  - {name: a, kind: availability, target: "99.9"}`, `sla a.credits: missing`},
		{`  - {name: a, kind: availability, target: "99.9", credits: [{above: "99.9", credit: "10"}]}`, `sla a.credits[0]: give below`},
		{`  - {name: a, kind: availability, target: "99.9", credits: [{below: "99", credit: "10"}, {below: "99.5", credit: "20"}]}`, `sla a.credits[1].below: 99.5 does not follow 99`},
		{`  - {name: a, kind: availability, target: "99.9", credits: [{below: "99.9", credit: "20"}, {below: "99", credit: "10"}]}`, `sla a.credits[1].credit: 10 is less than the milder step's 20`},
		{`  - {name: a, kind: availability, target: "99.9", credits: [{below: "99.9", credit: "0"}]}`, `sla a.credits[0].credit: 0 is outside (0, 100]`},
		{`  - {name: a, kind: availability, target: "99.9", creditOn: [data], ` + ok + `}`, `sla a.creditOn: meter "data" is not priced by the plan`},
		{`  - {name: a, kind: availability, target: "99.9", window: week, ` + ok + `}`, `sla a.window: "week" is neither period`},
		{`  - {name: a, kind: latency, target: "200", credits: [{above: "200", credit: "5"}]}`, `sla a.percentile: 0 is outside (0, 100]`},
		{`  - {name: a, kind: latency, percentile: "99", target: "0", credits: [{above: "200", credit: "5"}]}`, `sla a.target: 0 must be positive`},
		{`  - {name: a, kind: resolution, target: "95", credits: [{below: "95", credit: "5"}]}`, `sla a.within: missing`},
		{`  - {name: a, kind: resolution, within: soon, target: "95", credits: [{below: "95", credit: "5"}]}`, `not a duration`},
		{`  - {name: a, kind: error_rate, within: 4h, target: "1", credits: [{above: "1", credit: "5"}]}`, `sla a.within: only a resolution objective takes one`},
		{"  - {name: a, kind: availability, target: \"99.9\", " + ok + "}\n  - {name: a, kind: availability, target: \"99\", " + ok + "}", `sla[1].name: "a" appears twice`},
		{`  - {name: a, kind: availability, target: "99.9", refund: 3, ` + ok + `}`, `field refund not found`},
		{`  - {name: "up=time", kind: availability, target: "99.9", ` + ok + `}`, `sla[0].name: "up=time" has '='`},
	} {
		_, err := Parse([]byte(slaPlan(c.objectives)))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("objectives %s: %v, want an error with %q", c.objectives, err, c.want)
		}
	}
}

// TestSLAEvaluateAtTheBounds: a target is met at exactly its value; a
// credit step applies strictly past its bound, the highest one passed;
// fractions compare exactly (2/3 of a percent is not 0.6667).
func TestSLAEvaluateAtTheBounds(t *testing.T) {
	p, err := Parse([]byte(slaPlan(`
  - name: uptime
    kind: availability
    target: "99.9"
    credits: [{below: "99.9", credit: "10"}, {below: "99", credit: "25"}]
    creditOn: [voice]
  - name: fast
    kind: latency
    percentile: "99"
    target: "200"
    credits: [{above: "200", credit: "5"}, {above: "500", credit: "15"}]
  - name: support
    kind: resolution
    within: 4h
    target: "95"
    credits: [{below: "95", credit: "5"}]
`)))
	if err != nil {
		t.Fatal(err)
	}
	d := decimal.RequireFromString
	frac := func(num, den string) Measurement { return Measurement{Num: d(num), Den: d(den)} }
	for _, c := range []struct {
		objective int
		m         Measurement
		met       bool
		credit    string
	}{
		{0, frac("99.9", "1"), true, "0"},
		{0, frac("299.7", "3.0000001"), false, "10"}, // a hair under 99.9
		{0, frac("99", "1"), false, "10"},            // at 99: not below it
		{0, frac("98.99", "1"), false, "25"},
		{0, frac("200", "3"), false, "25"}, // 66.67
		{1, frac("200", "1"), true, "0"},
		{1, frac("201", "1"), false, "5"},
		{1, frac("500", "1"), false, "5"},
		{1, frac("501", "1"), false, "15"},
		{2, frac("95", "1"), true, "0"},
		{2, frac("1900", "20.0001"), false, "5"},
	} {
		met, credit := p.SLA[c.objective].Evaluate(c.m)
		if met != c.met || !credit.Equal(d(c.credit)) {
			t.Errorf("%s at %s/%s: met %v credit %s, want %v %s", p.SLA[c.objective].Name, c.m.Num, c.m.Den, met, credit, c.met, c.credit)
		}
	}
	if got := p.SLA[1].CreditOn; len(got) != 2 || got[0] != "sms" || got[1] != "voice" {
		t.Errorf("default creditOn %v, want every priced meter [sms voice]", got)
	}
	if p.SLA[2].Within.Duration != 4*time.Hour {
		t.Errorf("within %v, want 4h", p.SLA[2].Within)
	}
	terms := SLATerms{plan: p}
	if c := terms.Credit(d("123.45"), d("10")); !c.Equal(d("-12.34")) { // 12.345 half-even
		t.Errorf("10%% of 123.45: %s, want -12.34", c)
	}
}
