package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

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
          limit: "100"
          thresholds: [25, 50, {percent: 75, action: throttle}, {percent: 100, action: suspend}]
          allowanceThresholds: [50, 100]
      data:
        model: per_unit
        unitPrice: "0.01"
        entitlement: {limit: "1", of: amount, thresholds: [50, {percent: 100, action: suspend}]}
`

// TestProvisioningActionsExactlyOnce feeds random usage across two billing
// periods with crashes at random points, and checks that the actions
// delivered are exactly the crossings an independent oracle computes from
// the records (each threshold a customer's period total reaches, once),
// and that a re-delivered action is the same bytes as the first. Replay
// with TALLY_SEED.
func TestProvisioningActionsExactlyOnce(t *testing.T) {
	rng := seededRand(t, 0)
	catalog, err := rating.ParseCatalog([]byte(actionsPlan))
	if err != nil {
		t.Fatal(err)
	}
	subs, err := rating.NewSubscriptions(nil, catalog)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 1)
	h.rater = rating.NewPricing(catalog, subs, "capped")
	if h.meters, err = CompileMeters([]Meter{{Name: "sms"}, {Name: "data"}}, time.Hour); err != nil {
		t.Fatal(err)
	}
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.start()

	// The oracle: each customer's units a period and meter.
	type key struct{ customer, meter, period string }
	total := map[key]int64{}
	start := time.Date(2026, 1, 31, 12, 0, 0, 0, time.UTC) // crosses into February
	var records [][]byte
	for i := range 600 {
		customer := fmt.Sprintf("c%d", rng.IntN(6))
		meter := []string{"sms", "data"}[rng.IntN(2)]
		at := start.Add(time.Duration(i) * time.Minute)
		value := int64(1 + rng.IntN(9))
		records = append(records, fmt.Appendf(nil, `{"id":"r%d","customer":%q,"meter":%q,"time":%q,"value":%d}`, i, customer, meter, at.Format(time.RFC3339), value))
		total[key{customer, meter, at.Format("2006-01")}] += value
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

	want := map[string]bool{}
	for k, units := range total {
		id := k.customer + "|" + k.meter + "|" + k.period + "-01T00:00:00Z|"
		switch k.meter {
		case "sms": // limit 100 units; allowance 20 units
			for _, pct := range []int64{25, 50, 75, 100} {
				if units*100 >= 100*pct {
					want[id+"limit|"+fmt.Sprint(pct)] = true
				}
			}
			for _, pct := range []int64{50, 100} {
				if units*100 >= 20*pct {
					want[id+"allowance|"+fmt.Sprint(pct)] = true
				}
			}
		case "data": // limit 1.00 EUR at 0.01 a unit: 100 units
			for _, pct := range []int64{50, 100} {
				if units*100 >= 100*pct {
					want[id+"limit|"+fmt.Sprint(pct)] = true
				}
			}
		}
	}
	got := map[string]string{}
	for _, a := range actions.actions {
		b, _ := json.Marshal(a)
		if prev, ok := got[a.ID]; ok && prev != string(b) {
			t.Errorf("action %s delivered twice with different bodies:\n%s\n%s", a.ID, prev, b)
		}
		got[a.ID] = string(b)
	}
	var missing, extra []string
	for id := range want {
		if _, ok := got[id]; !ok {
			missing = append(missing, id)
		}
	}
	for id := range got {
		if !want[id] {
			extra = append(extra, id)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	if len(missing)+len(extra) > 0 {
		t.Errorf("actions: %d missing %v, %d not owed %v (of %d owed)", len(missing), missing, len(extra), extra, len(want))
	}
	if len(want) < 20 {
		t.Errorf("only %d crossings owed: the test crosses too little", len(want))
	}
	t.Logf("%d actions owed, %d deliveries", len(want), len(actions.actions))
}
