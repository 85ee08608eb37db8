package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// pricedHarness returns a harness, not started, pricing with the catalog
// plans (defaultPlan for customers without a subscription) and metering
// meters in windows of size.
func pricedHarness(t *testing.T, plans, defaultPlan string, subscriptions []rating.Subscription, size time.Duration, meters ...Meter) *harness {
	t.Helper()
	catalog, err := rating.ParseCatalog([]byte(plans))
	if err != nil {
		t.Fatal(err)
	}
	subs, err := rating.NewSubscriptions(subscriptions, catalog)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 1)
	h.rater = rating.NewPricing(catalog, subs, defaultPlan)
	if h.meters, err = CompileMeters(meters, size); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestEntitlementsFromLiveState evaluates a plan's entitlements against a
// customer's billing period in progress, before and after a crash. The
// expected values are worked by hand below.
func TestEntitlementsFromLiveState(t *testing.T) {
	const plans = `
plans:
  - id: capped
    currency: EUR
    rounding: {decimals: 2}
    meters:
      sms:
        model: per_unit
        unitPrice: "0.10"
        freeAllowance: "10"
        entitlement:
          limit: "100"
          thresholds: [50, {percent: 80, action: throttle}, {percent: 100, action: suspend}]
          allowanceThresholds: [100]
      data:
        model: per_unit
        unitPrice: "0.01"
        entitlement: {limit: "5", of: amount, enforcement: soft}
      mms:
        model: per_unit
        unitPrice: "0.01"
        entitlement: {limit: "8", of: amount}
      voice: {model: per_unit, unitPrice: "0.02"}
  - id: pricey
    currency: EUR
    rounding: {decimals: 2}
    meters:
      data:
        model: per_unit
        unitPrice: "0.10"
        entitlement: {limit: "50", of: amount}
`
	// bob moves to pricey on January 3rd, mid-period: the check prices
	// under the plan in force now, whose entitlement it checks.
	h := pricedHarness(t, plans, "capped", []rating.Subscription{{Customer: "bob", Plan: "pricey", Start: time.Date(2026, 1, 3, 0, 0, 0, 0, time.UTC)}},
		time.Minute, Meter{Name: "sms"}, Meter{Name: "data"}, Meter{Name: "mms"}, Meter{Name: "voice"})
	h.start()
	at := time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC)
	// ann: 17 records of 5 sms (85), 6 of 100 data (600), one voice.
	for i := range 17 {
		h.src.append(0, fmt.Appendf(nil, `{"id":"s%d","customer":"ann","meter":"sms","time":%q,"value":5}`, i, at.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
	}
	for i := range 6 {
		h.src.append(0, fmt.Appendf(nil, `{"id":"d%d","customer":"ann","meter":"data","time":%q,"value":100}`, i, at.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
		h.src.append(0, fmt.Appendf(nil, `{"id":"m%d","customer":"ann","meter":"mms","time":%q,"value":100}`, i, at.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
	}
	h.src.append(0, fmt.Appendf(nil, `{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":60}`, at.Add(20*time.Minute).Format(time.RFC3339)))
	h.checkpoint(true) // emits every window, open ones too: data's amount counts rows emitted
	// Then one more of each, not emitted: units count them at once, the
	// amount when their windows are emitted.
	h.src.append(0, fmt.Appendf(nil, `{"id":"s-late","customer":"ann","meter":"sms","time":%q,"value":5}`, at.Add(30*time.Minute).Format(time.RFC3339)))
	h.src.append(0, fmt.Appendf(nil, `{"id":"d-late","customer":"ann","meter":"data","time":%q,"value":100}`, at.Add(30*time.Minute).Format(time.RFC3339)))
	h.src.append(0, fmt.Appendf(nil, `{"id":"m-late","customer":"ann","meter":"mms","time":%q,"value":100}`, at.Add(30*time.Minute).Format(time.RFC3339)))
	h.checkpoint(false)

	check := func(when string) {
		t.Helper()
		ctx := context.Background()
		got, err := h.engine.Entitlements(ctx, "ann")
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		// sms: 90 of 100 units: 50% (notify) and 80% (throttle) crossed,
		// 100% not; 10 left. The 10 free units are used 9 times over:
		// allowance 100% crossed. data: the 600 units emitted at 0.01 =
		// 6.00 EUR of a soft 5.00 (the 100 not emitted yet do not count):
		// its default threshold, 100% notify, crossed.
		want := []string{
			"data plan=capped period=2026-01-01..2026-02-01 of=amount EUR limit=5 used=6 remaining=0 state=warning crossed=[100:notify] allowance=<nil> []",
			"mms plan=capped period=2026-01-01..2026-02-01 of=amount EUR limit=8 used=6 remaining=2 state=ok crossed=[] allowance=<nil> []",
			"sms plan=capped period=2026-01-01..2026-02-01 of=units  limit=100 used=90 remaining=10 state=throttled crossed=[50:notify 80:throttle] allowance=900 [100:notify]",
		}
		if len(got.Entitlements) != len(want) {
			t.Fatalf("%s: %d entitlements %+v, want %d", when, len(got.Entitlements), got.Entitlements, len(want))
		}
		for i, e := range got.Entitlements {
			var crossed, allowanceCrossed []string
			for _, c := range e.Crossed {
				crossed = append(crossed, c.Percent.String()+":"+string(c.Action))
			}
			for _, c := range e.AllowanceCrossed {
				allowanceCrossed = append(allowanceCrossed, c.Percent.String()+":"+string(c.Action))
			}
			var allowance any = e.AllowanceUsed
			if e.AllowanceUsed != nil {
				allowance = e.AllowanceUsed.String()
			}
			line := fmt.Sprintf("%s plan=%s period=%s..%s of=%s %s limit=%s used=%s remaining=%s state=%s crossed=%v allowance=%v %v",
				e.Meter, e.Plan, e.PeriodStart.Format(time.DateOnly), e.PeriodEnd.Format(time.DateOnly), e.Of, e.Currency,
				e.Limit, e.Used, e.Remaining, e.State, crossed, allowance, allowanceCrossed)
			if line != want[i] {
				t.Errorf("%s:\n got %s\nwant %s", when, line, want[i])
			}
		}
		// 10 more sms reach the limit exactly: allowed; 11 pass it.
		for units, allowed := range map[int64]bool{10: true, 11: false, 0: true} {
			c, err := h.engine.CheckEntitlement(ctx, "ann", "sms", decimal.NewFromInt(units))
			if err != nil || c.Allowed != allowed || !c.More.Equal(decimal.NewFromInt(units)) {
				t.Errorf("%s: check %d sms: %+v (%v), want allowed %v", when, units, c, err, allowed)
			}
		}
		// 100 more data units cost 1.00 on top of the 700 so far: a soft
		// limit allows them anyway.
		if c, err := h.engine.CheckEntitlement(ctx, "ann", "data", decimal.NewFromInt(100)); err != nil || !c.Allowed || !c.More.Equal(decimal.NewFromInt(1)) ||
			c.Pending == nil || !c.Pending.Equal(decimal.NewFromInt(1)) {
			t.Errorf("%s: check 100 data: %+v (%v), want allowed, costing 1 on top of 1 pending", when, c, err)
		}
		// mms: 6.00 charged, 1.00 aggregated but not charged yet: 100
		// more (1.00) reach the hard 8.00 exactly; 101 pass it.
		for units, allowed := range map[int64]bool{100: true, 101: false} {
			if c, err := h.engine.CheckEntitlement(ctx, "ann", "mms", decimal.NewFromInt(units)); err != nil || c.Allowed != allowed {
				t.Errorf("%s: check %d mms: %+v (%v), want allowed %v", when, units, c, err, allowed)
			}
		}
		// bob, on pricey since January 3rd, without usage: 500 data cost
		// 50.00 there, his whole limit; 501 pass it.
		for units, allowed := range map[int64]bool{500: true, 501: false} {
			c, err := h.engine.CheckEntitlement(ctx, "bob", "data", decimal.NewFromInt(units))
			if err != nil || c.Allowed != allowed || c.Plan != "pricey" || !c.More.Equal(decimal.NewFromInt(units).Div(decimal.NewFromInt(10))) {
				t.Errorf("%s: check %d data for bob: %+v (%v), want allowed %v, priced at pricey's 0.10", when, units, c, err, allowed)
			}
		}
		if _, err := h.engine.CheckEntitlement(ctx, "ann", "voice", decimal.NewFromInt(1)); !errors.Is(err, ErrNoEntitlement) {
			t.Errorf("%s: check voice (no entitlement): %v, want ErrNoEntitlement", when, err)
		}
		if _, err := h.engine.CheckEntitlement(ctx, "ann", "fax", decimal.NewFromInt(1)); !errors.Is(err, ErrUnknownMeter) {
			t.Errorf("%s: check fax (no such meter): %v, want ErrUnknownMeter", when, err)
		}
		// A customer without usage has the whole limit.
		zed, err := h.engine.CheckEntitlement(ctx, "zed", "sms", decimal.NewFromInt(100))
		if err != nil || !zed.Allowed || !zed.Used.IsZero() || zed.State != rating.StateOK || !zed.Remaining.Equal(decimal.NewFromInt(100)) {
			t.Errorf("%s: check 100 sms for a customer without usage: %+v (%v), want allowed with 100 remaining", when, zed, err)
		}
	}
	check("live")
	h.crash()
	h.checkpoint(false) // running again, on the recovered state
	check("after a crash")
	h.stop()
}
