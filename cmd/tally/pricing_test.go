package main

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// TestPeriodFeeProrationByMonthLength: a plan change on the 15th of
// February prorates flat fees by the days of that February. basic is 10.00
// a month, pro 30.00. Leap 2028: (10 x 14 + 30 x 15) / 29 = 20.34; 2027:
// (10 x 14 + 30 x 14) / 28 = 20.00. A whole month on one plan is its fee.
func TestPeriodFeeProrationByMonthLength(t *testing.T) {
	catalog, err := rating.ParseCatalog([]byte(`
plans:
  - {id: basic, currency: EUR, rounding: {decimals: 2}, meters: {sms: {model: per_unit, unitPrice: "0.1", flatFee: "10"}}}
  - {id: pro, currency: EUR, rounding: {decimals: 2}, meters: {sms: {model: per_unit, unitPrice: "0.1", flatFee: "30"}}}
`))
	if err != nil {
		t.Fatal(err)
	}
	day := func(s string) time.Time { d, _ := time.Parse(time.DateOnly, s); return d }
	for _, tt := range []struct {
		year, want string
	}{{"2028", "20.34"}, {"2027", "20"}} {
		subs, err := rating.NewSubscriptions([]rating.Subscription{
			{Customer: "ann", Plan: "basic", Start: day(tt.year + "-01-01"), End: day(tt.year + "-02-15")},
			{Customer: "ann", Plan: "pro", Start: day(tt.year + "-02-15")},
		}, catalog)
		if err != nil {
			t.Fatal(err)
		}
		p := rating.NewPricing(catalog, subs, "")
		c, ok, err := p.PeriodFee(rating.Subscriber{ID: "ann"}, "sms", day(tt.year+"-02-01"), day(tt.year+"-03-01"), decimal.Zero)
		if err != nil || !ok || c.Amount.String() != tt.want {
			t.Errorf("February %s: fee %v (ok %v, err %v), want %s", tt.year, c.Amount, ok, err, tt.want)
		}
		c, _, _ = p.PeriodFee(rating.Subscriber{ID: "ann"}, "sms", day(tt.year+"-03-01"), day(tt.year+"-04-01"), decimal.Zero)
		if c.Amount.String() != "30" {
			t.Errorf("March %s (31 days, all pro): fee %v, want 30", tt.year, c.Amount)
		}
	}
	// Without a subscription or default plan there is no fee, and no error.
	p := rating.NewPricing(catalog, mustSubs(t, catalog), "")
	if _, ok, err := p.PeriodFee(rating.Subscriber{ID: "eve"}, "sms", day("2027-02-01"), day("2027-03-01"), decimal.Zero); ok || err != nil {
		t.Errorf("fee for a customer without a plan: ok %v, err %v", ok, err)
	}
}

func mustSubs(t *testing.T, c *rating.Catalog) *rating.Subscriptions {
	t.Helper()
	s, err := rating.NewSubscriptions(nil, c)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
