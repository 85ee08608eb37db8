package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// captureActions records every provisioning action delivered, re-deliveries
// included.
type captureActions struct {
	mu      sync.Mutex
	actions []ProvisioningAction
}

func (c *captureActions) Name() string { return "capture-actions" }

func (c *captureActions) WriteActions(_ context.Context, actions []ProvisioningAction) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.actions = append(c.actions, actions...)
	return nil
}

const actionsPlan = `
plans:
  - id: capped
    currency: EUR
    rounding: {decimals: 2}
    meters:
      sms:
        model: per_unit
        unitPrice: "0.05"
        freeAllowance: "20"
        entitlement:
          limit: "200"
          thresholds: [25, 50, {percent: 75, action: throttle}, {percent: 100, action: suspend}]
          allowanceThresholds: [50, 100]
      data:
        model: per_unit
        unitPrice: "0.01"
        entitlement: {limit: "1.5", of: amount, thresholds: [50, {percent: 100, action: suspend}]}
  - id: small
    currency: EUR
    rounding: {decimals: 2}
    meters:
      sms:
        model: per_unit
        unitPrice: "0.05"
        entitlement: {limit: "50", thresholds: [50, {percent: 100, action: suspend}]}
      data: {model: per_unit, unitPrice: "0.01"}
`

// actionsHarness starts an engine pricing with actionsPlan whose actions
// go to the returned sink.
func actionsHarness(t *testing.T) (*harness, *captureActions) {
	t.Helper()
	h := pricedHarness(t, actionsPlan, "capped", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.start()
	return h, actions
}

// delivered returns the actions delivered by id, failing when an id was
// delivered twice with different bodies.
func delivered(t *testing.T, c *captureActions) map[string]ProvisioningAction {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	got := map[string]ProvisioningAction{}
	bodies := map[string]string{}
	for _, a := range c.actions {
		b, _ := json.Marshal(a)
		if prev, ok := bodies[a.ID]; ok && prev != string(b) {
			t.Errorf("action %s delivered twice with different bodies:\n%s\n%s", a.ID, prev, b)
		}
		bodies[a.ID], got[a.ID] = string(b), a
	}
	return got
}

// TestProvisioningActionsExactlyOnce feeds random usage across two billing
// periods with crashes at random points, and checks the actions delivered
// against an oracle computed from the records alone (running totals in
// record order): exactly the crossings owed, a units crossing with the
// units and time of the record that reached it, an amount crossing with a
// charge between its share and the period's total, and a re-delivered
// action the same bytes as the first. Replay with TALLY_SEED.
func TestProvisioningActionsExactlyOnce(t *testing.T) {
	rng := seededRand(t, 0)
	h, actions := actionsHarness(t)

	type key struct{ customer, meter, period string }
	type owed struct {
		action rating.Action
		used   int64
		at     time.Time
	}
	running, total := map[key]int64{}, map[key]int64{}
	want := map[string]owed{}
	announce := func(id string, action rating.Action, used int64, at time.Time) {
		if _, ok := want[id]; !ok {
			want[id] = owed{action, used, at}
		}
	}
	start := time.Date(2026, 1, 31, 0, 0, 0, 0, time.UTC) // two days: January's last, February's first
	var records [][]byte
	for i := range 600 {
		customer := fmt.Sprintf("c%d", rng.IntN(6))
		meter := []string{"sms", "data"}[rng.IntN(2)]
		at := start.Add(time.Duration(i) * 5 * time.Minute)
		value := int64(1 + rng.IntN(9))
		records = append(records, fmt.Appendf(nil, `{"id":"r%d","customer":%q,"meter":%q,"time":%q,"value":%d}`, i, customer, meter, at.Format(time.RFC3339), value))
		k := key{customer, meter, at.Format("2006-01")}
		before := running[k]
		running[k] += value
		total[k] = running[k]
		id := customer + "|" + meter + "|" + k.period + "-01T00:00:00Z|"
		if meter == "sms" { // limit 200 units; allowance 20
			for j, pct := range []int64{25, 50, 75, 100} {
				if before*100 < 200*pct && running[k]*100 >= 200*pct {
					announce(id+"limit|"+fmt.Sprint(pct), []rating.Action{"notify", "notify", "throttle", "suspend"}[j], running[k], at)
				}
			}
			for _, pct := range []int64{50, 100} {
				if before*100 < 20*pct && running[k]*100 >= 20*pct {
					announce(id+"allowance|"+fmt.Sprint(pct), "notify", running[k], at)
				}
			}
		}
	}
	for k, units := range total { // data: 1.50 EUR at 0.01 a unit, 150 units
		if k.meter != "data" {
			continue
		}
		for j, pct := range []int64{50, 100} {
			if units*100 >= 150*pct {
				want[k.customer+"|data|"+k.period+"-01T00:00:00Z|limit|"+fmt.Sprint(pct)] = owed{action: []rating.Action{"notify", "suspend"}[j]}
			}
		}
	}
	for i, r := range records {
		h.src.append(0, r)
		switch rng.IntN(40) {
		case 0:
			h.checkpoint(rng.IntN(2) == 0)
			h.crash()
		case 1:
			h.checkpoint(rng.IntN(2) == 0)
		case 2:
			if i%3 == 0 {
				h.crash() // records since the last checkpoint replay
			}
		}
	}
	h.checkpoint(true) // every window emitted: data's amounts charged
	h.stop()

	got := delivered(t, actions)
	for id, w := range want {
		a, ok := got[id]
		switch {
		case !ok:
			t.Errorf("action %s owed, not delivered", id)
		case a.Action != w.action:
			t.Errorf("action %s is %s, want %s", id, a.Action, w.action)
		case a.Meter == "sms" && (!a.Used.Equal(decimal.NewFromInt(w.used)) || !a.At.Equal(w.at)):
			t.Errorf("action %s: used %s at %s, want %d at %s (the record that crossed)", id, a.Used, a.At, w.used, w.at)
		case a.Meter == "data":
			share := a.Threshold.Mul(decimal.RequireFromString("1.5")).Div(decimal.NewFromInt(100))
			k := key{a.Customer, "data", a.PeriodStart.Format("2006-01")}
			if a.Used.LessThan(share) || a.Used.GreaterThan(decimal.NewFromInt(total[k]).Div(decimal.NewFromInt(100))) || a.Basis != rating.LimitAmount || a.Currency != "EUR" {
				t.Errorf("action %s: %+v, want an amount between %s and the period's %d units' charge", id, a, share, total[k])
			}
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			t.Errorf("action %s delivered, not owed", id)
		}
	}
	if len(want) < 20 || len(want) >= 6*2*8 {
		t.Errorf("%d crossings owed: the test should owe some thresholds and not others", len(want))
	}
	t.Logf("%d actions owed, %d deliveries", len(want), len(actions.actions))
}

// TestProvisioningOnPlanChange: a plan change mid-period announces the new
// plan's thresholds the period already reached, at the change, without
// waiting for a record; thresholds at or under the share announced are
// not announced again.
func TestProvisioningOnPlanChange(t *testing.T) {
	h, actions := actionsHarness(t)
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for i := range 12 { // 120 sms of capped's 200: 25% and 50% announced
		h.src.append(0, fmt.Appendf(nil, `{"id":"s%d","customer":"ann","meter":"sms","time":%q,"value":10}`, i, at.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
	}
	h.checkpoint(false)
	change := at.Add(time.Hour)
	h.src.append(0, fmt.Appendf(nil, `{"type":"subscription.plan_changed","id":"p1","customer":"ann","plan":"small","time":%q}`, change.Format(time.RFC3339)))
	h.checkpoint(false)
	h.crash() // the announcement is durable: a replay does not repeat it
	h.checkpoint(false)
	h.stop()
	got := delivered(t, actions)
	var ids []string
	for id := range got {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	p := "ann|sms|2026-03-01T00:00:00Z|"
	want := []string{p + "allowance|100", p + "allowance|50", p + "limit|100", p + "limit|25", p + "limit|50"}
	if !slices.Equal(ids, want) {
		t.Fatalf("actions %v, want %v", ids, want)
	}
	if a := got[p+"limit|100"]; a.Plan != "small" || a.Action != rating.ActionSuspend || !a.At.Equal(change) || !a.Used.Equal(decimal.NewFromInt(120)) {
		t.Errorf("the plan change's action: %+v, want small's suspend at the change with 120 used", a)
	}
}
