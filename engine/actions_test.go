package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
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
	for k, units := range total {
		// January closes (the records reach February 2nd): a period that
		// reached a throttle or a suspend (sms 75%: 150 units; data 100%:
		// 150 units) resumes in February.
		if k.period == "2026-01" && units >= 150 {
			want[k.customer+"|"+k.meter+"|2026-02-01T00:00:00Z|resume"] = owed{action: rating.ActionResume}
		}
		if k.meter != "data" { // data: 1.50 EUR at 0.01 a unit, 150 units
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
		case a.Action == rating.ActionResume:
			if !a.At.Equal(a.PeriodStart) || a.PeriodStart.Format("2006-01") != "2026-02" {
				t.Errorf("resume %s: %+v, want February's start", id, a)
			}
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
	want := []string{fmt.Sprintf("ann|@subscription|%x|update_limits", eventIDHash("", "p1", subscriptionMeter)), p + "allowance|100", p + "allowance|50", p + "limit|100", p + "limit|25", p + "limit|50"}
	if !slices.Equal(ids, want) {
		t.Fatalf("actions %v, want %v", ids, want)
	}
	if a := got[p+"limit|100"]; a.Plan != "small" || a.Action != rating.ActionSuspend || !a.At.Equal(change) || !a.Used.Equal(decimal.NewFromInt(120)) {
		t.Errorf("the plan change's action: %+v, want small's suspend at the change with 120 used", a)
	}
}

// TestResumeAndLifecycle: subscription events announce activate,
// update_limits (with the new plan's limits) and deactivate; a period
// that ended throttled is resumed once when it closes, also when the
// engine crashes after announcing it; a period that ends suspended after
// the customer cancelled is not resumed. Worked by hand in the comments.
func TestResumeAndLifecycle(t *testing.T) {
	h := pricedHarness(t, actionsPlan, "", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.start()
	feed := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
	sms := func(id string, at time.Time, n int) {
		feed(`{"id":%q,"customer":"bob","meter":"sms","time":%q,"value":%d}`, id, at.Format(time.RFC3339), n)
	}
	feed(`{"type":"subscription.created","id":"c1","customer":"bob","plan":"capped","time":"2026-01-01T00:00:00Z"}`)
	feed(`{"type":"subscription.created","id":"c2","customer":"eve","plan":"capped","time":"2026-01-01T00:00:00Z"}`)
	jan := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	for i := range 16 { // 160 of capped's 200: 25, 50 notify, 75 throttle (and the allowance's 50, 100)
		sms(fmt.Sprintf("j%d", i), jan.Add(time.Duration(i)*time.Minute), 10)
	}
	h.checkpoint(false)
	h.crash()
	// eve's record moves the watermark past February 1st + 5 s: January
	// closes, throttled, and February resumes. Within the revise horizon
	// (an hour) January stays in memory and in the state.
	sms("f1", time.Date(2026, 2, 1, 0, 10, 0, 0, time.UTC), 10)
	feed(`{"id":"e1","customer":"eve","meter":"data","time":"2026-02-01T00:30:00Z","value":1}`)
	h.checkpoint(false)
	h.checkpoint(false) // the sink's progress durable: a crash now re-delivers nothing
	h.crash()           // recovery closes January again (closed ends are not kept)
	h.checkpoint(false)
	// February: small (limit 50) from the 10th; 10 + 45 = 55 crosses 50%
	// and 100% (suspend); cancelled on the 20th; eve moves the watermark
	// into March: February closes suspended, but bob has no plan in March.
	feed(`{"type":"subscription.plan_changed","id":"c3","customer":"bob","plan":"small","time":"2026-02-10T00:00:00Z"}`)
	sms("f2", time.Date(2026, 2, 11, 0, 0, 0, 0, time.UTC), 45)
	feed(`{"type":"subscription.cancelled","id":"c4","customer":"bob","time":"2026-02-20T00:00:00Z"}`)
	feed(`{"id":"e2","customer":"eve","meter":"data","time":"2026-03-03T00:00:00Z","value":1}`)
	h.checkpoint(false)
	h.stop()

	got := delivered(t, actions)
	var ids []string
	count := map[string]int{}
	actions.mu.Lock()
	for _, a := range actions.actions {
		if a.Customer == "bob" && count[a.ID] == 0 {
			ids = append(ids, a.ID)
		}
		count[a.ID]++
	}
	actions.mu.Unlock()
	jp, fp := "bob|sms|2026-01-01T00:00:00Z|", "bob|sms|2026-02-01T00:00:00Z|"
	// A lifecycle action's id holds its event's dedup identity, hashed.
	life := func(event, action string) string {
		return fmt.Sprintf("bob|@subscription|%x|%s", eventIDHash("", event, subscriptionMeter), action)
	}
	want := []string{
		life("c1", "activate"),
		jp + "allowance|50", jp + "allowance|100", jp + "limit|25", jp + "limit|50", jp + "limit|75",
		fp + "allowance|50", // the record of February 1st, applied before the barrier closes January
		fp + "resume",
		life("c3", "update_limits"),
		fp + "limit|50", fp + "limit|100",
		life("c4", "deactivate"),
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("bob's actions in order of delivery:\n%v\nwant\n%v", ids, want)
	}
	if count[fp+"resume"] != 1 {
		t.Errorf("resume delivered %d times, want once (announced once, its progress durable before the crash)", count[fp+"resume"])
	}
	r := got[fp+"resume"]
	if r.Action != rating.ActionResume || r.Plan != "capped" || !r.At.Equal(time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)) ||
		!r.PeriodEnd.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) || !r.Limit.Equal(decimal.NewFromInt(200)) || r.Basis != rating.LimitUnits {
		t.Errorf("resume: %+v", r)
	}
	a := got[life("c1", "activate")]
	wantLimits := []ActionLimit{
		{Meter: "data", Limit: decimal.RequireFromString("1.5"), Of: rating.LimitAmount, Enforcement: rating.Hard},
		{Meter: "sms", Limit: decimal.NewFromInt(200), Of: rating.LimitUnits, Enforcement: rating.Hard},
	}
	if a.Action != rating.ActionActivate || a.Plan != "capped" || fmt.Sprint(a.Limits) != fmt.Sprint(wantLimits) {
		t.Errorf("activate: %+v, want capped's limits %v", a, wantLimits)
	}
	u := got[life("c3", "update_limits")]
	if u.Plan != "small" || fmt.Sprint(u.Limits) != fmt.Sprint([]ActionLimit{{Meter: "sms", Limit: decimal.NewFromInt(50), Of: rating.LimitUnits, Enforcement: rating.Hard}}) {
		t.Errorf("update_limits: %+v, want small's sms limit of 50", u)
	}
	if d := got[life("c4", "deactivate")]; d.Plan != "" || d.Limits != nil || !d.At.Equal(time.Date(2026, 2, 20, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("deactivate: %+v", d)
	}
	b, _ := json.Marshal(got[life("c4", "deactivate")])
	if want := `{"id":"` + life("c4", "deactivate") + `","action":"deactivate","customer":"bob","event":{"id":"c4"},"at":"2026-02-20T00:00:00Z"}`; string(b) != want {
		t.Errorf("deactivate's JSON:\n%s\nwant\n%s", b, want)
	}
}

// TestResumeNeverUndoesABlock: a period throttled by a late record after
// it closed is resumed at the next barrier, without waiting for a crash to
// close it again (bob); a period whose next one is already throttled when
// it closes gets no resume, which would undo the new throttle (dan).
func TestResumeNeverUndoesABlock(t *testing.T) {
	h, actions := actionsHarness(t)
	feed := func(id, customer, at string, n int) {
		h.src.append(0, fmt.Appendf(nil, `{"id":%q,"customer":%q,"meter":"sms","time":%q,"value":%d}`, id, customer, at, n))
	}
	feed("b1", "bob", "2026-01-10T00:00:00Z", 140) // 70%: notify only
	feed("d1", "dan", "2026-01-10T00:00:00Z", 160) // 80%: throttled
	feed("d2", "dan", "2026-02-01T00:10:00Z", 160) // February throttled too, before January closes
	feed("e1", "eve", "2026-02-01T00:30:00Z", 1)   // closes January
	h.checkpoint(false)
	feed("b2", "bob", "2026-01-31T23:59:00Z", 20) // late, within the revise horizon: January reaches 80%
	h.checkpoint(false)
	h.stop()
	got := delivered(t, actions)
	if _, ok := got["bob|sms|2026-01-01T00:00:00Z|limit|75"]; !ok {
		t.Fatalf("bob's late throttle not announced: %v", slices.Sorted(maps.Keys(got)))
	}
	if _, ok := got["bob|sms|2026-02-01T00:00:00Z|resume"]; !ok {
		t.Errorf("bob's January, throttled after it closed, is not resumed")
	}
	if _, ok := got["dan|sms|2026-02-01T00:00:00Z|limit|75"]; !ok {
		t.Fatalf("dan's February throttle not announced: %v", slices.Sorted(maps.Keys(got)))
	}
	if a, ok := got["dan|sms|2026-02-01T00:00:00Z|resume"]; ok {
		t.Errorf("dan's February was resumed after its own throttle: %+v", a)
	}
}

// TestActionCutsEarlyCheckpoint: a queued action has its checkpoint cut
// without waiting for the regular interval (a minute in the harness, where
// otherwise only the test asks for checkpoints), and so does the next one
// after that barrier, on either shard; actions queued inside a barrier ask
// for none. Red without the shards' request (queueAction) or the
// dispatcher's answer to it.
func TestActionCutsEarlyCheckpoint(t *testing.T) {
	h := pricedHarness(t, actionsPlan, "capped", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.earlyCheckpoints = true
	h.start()
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	send := func(customer string, n int) {
		for i := range n {
			h.src.append(0, fmt.Appendf(nil, `{"id":"%s-%d","customer":%q,"meter":"sms","time":%q,"value":10}`, customer, i, customer,
				at.Add(time.Duration(i)*time.Minute).Format(time.RFC3339)))
		}
	}
	// waitFor waits for ids without asking for a checkpoint; the regular
	// interval is a minute, so half of it is ample for checkpoints cut at
	// most actionCheckpointSpacing after their actions were queued.
	waitFor := func(ids ...string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := delivered(t, actions)
			missing := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { _, ok := got[id]; return ok })
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("actions %v not delivered before the interval's checkpoint; got %v", missing, slices.Collect(maps.Keys(got)))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// 60 sms of capped's 200: 25% and both allowance thresholds (20).
	send("ann", 6)
	p := "ann|sms|2026-03-01T00:00:00Z|"
	waitFor(p+"limit|25", p+"allowance|50", p+"allowance|100")
	// Later crossings ask again, whichever shard holds the customer.
	send("bea", 6)
	waitFor("bea|sms|2026-03-01T00:00:00Z|limit|25")
	h.src.append(0, fmt.Appendf(nil, `{"id":"ann-more","customer":"ann","meter":"sms","time":%q,"value":50}`, at.Add(time.Hour).Format(time.RFC3339)))
	waitFor(p + "limit|50")
	// No runaway cuts: a handful of checkpoints for three requests.
	if seq := h.engine.committedSeq.Load(); seq > 10 {
		t.Errorf("%d checkpoints cut for three bursts of actions", seq)
	}
	h.stop()
}

// TestNoEarlyCheckpointForBarrierActions: an amount crossing is found at a
// barrier (when windows are charged); its action is in that checkpoint,
// and asks for no early one after it. (From a review, which saw a spare
// checkpoint cut 200 ms later.)
func TestNoEarlyCheckpointForBarrierActions(t *testing.T) {
	h := pricedHarness(t, actionsPlan, "capped", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.earlyCheckpoints = true
	h.start()
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	h.src.append(0, fmt.Appendf(nil, `{"id":"d1","customer":"ann","meter":"data","time":%q,"value":100}`, at.Format(time.RFC3339)))
	h.checkpoint(true) // emitOpen: data's charge 1.00 of 1.50 crosses 50%
	if _, ok := delivered(t, actions)["ann|data|2026-03-01T00:00:00Z|limit|50"]; !ok {
		t.Fatalf("the amount crossing was not in the requested checkpoint: %v", delivered(t, actions))
	}
	after := h.engine.committedSeq.Load()
	time.Sleep(3 * actionCheckpointSpacing)
	if later := h.engine.committedSeq.Load(); later > after {
		t.Errorf("checkpoints %d..%d cut unasked after an action queued at a barrier (already in %d)", after+1, later, after)
	}
	h.stop()
}

// gatedSink takes rows only once its gate is open.
type gatedSink struct{ gate chan struct{} }

func (g *gatedSink) Name() string { return "gated" }
func (g *gatedSink) Write(ctx context.Context, rows []RatedRow) error {
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestEarlyCheckpointSurvivesBackpressure: an action's early checkpoint
// falls due while consumption is paused (the row sink is behind); it is
// cut once the sinks catch up, not left to the regular interval (a
// minute here). Red when the pause drops the request (found by a review).
func TestEarlyCheckpointSurvivesBackpressure(t *testing.T) {
	h := pricedHarness(t, actionsPlan, "capped", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.cfg.MaxUndeliveredCheckpoints = 1
	h.earlyCheckpoints = true
	gate := &gatedSink{gate: make(chan struct{})}
	h.sinkOverride = gate
	hold := make(chan struct{})
	var once sync.Once
	h.cfg.FaultHook = func(string) { once.Do(func() { <-hold }) }
	h.start()
	at := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC).Format(time.RFC3339)
	rec := func(id, customer string, v int) {
		h.src.append(0, fmt.Appendf(nil, `{"id":%q,"customer":%q,"meter":"sms","time":%q,"value":%d}`, id, customer, at, v))
	}
	rec("r0", "bob", 1)
	reply := make(chan uint64, 1)
	h.engine.checkpointRequests <- checkpointRequest{offsets: h.src.offsets(), emitOpen: true, reply: reply}
	<-reply              // checkpoint 1 is cut; its commit waits in the hook
	rec("r1", "ann", 10) // 50% of the allowance (20): an action after it
	time.Sleep(30 * time.Millisecond)
	close(hold)
	for h.engine.committedSeq.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	rec("r2", "bob", 1)                     // the dispatcher takes it and sees the pause (bob's row undelivered)
	time.Sleep(2 * actionCheckpointSpacing) // the early cut falls due, paused
	close(gate.gate)
	deadline := time.Now().Add(30 * time.Second)
	for len(delivered(t, actions)) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(delivered(t, actions)) == 0 {
		t.Errorf("the action queued before the pause was not cut within 30 s of the sinks catching up")
	}
	h.cancel()
	<-h.done
}
