package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

const slaPlans = `
plans:
  - id: gold
    currency: EUR
    rounding: {decimals: 2}
    meters:
      voice: {model: per_unit, unitPrice: "0.01", flatFee: "10"}
      sms: {model: per_unit, unitPrice: "0.1"}
    sla:
      - name: uptime
        kind: availability
        target: "99.9"
        credits: [{below: "99.9", credit: "10"}, {below: "99", credit: "25"}]
        creditOn: [voice]
      - name: fast
        kind: latency
        percentile: "90"
        target: "200"
        credits: [{above: "200", credit: "5"}]
      - name: support
        kind: resolution
        within: 4h
        target: "100"
        credits: [{below: "100", credit: "20"}]
        creditOn: [sms]
`

// TestSLACredits measures ann's March against gold's objectives and
// credits the breaches, revising them as late events arrive, with a crash
// in the middle. Worked by hand (March: 31 days, 2,678,400 s; voice
// charges 1000 × 0.01 + the flat fee 10 = 20.00, sms 50 × 0.1 = 5.00):
//
//	close (watermark 04-01T00:59:55):
//	  uptime: inc-1 2 h, inc-2 from 03-31T16:00 not over: 8 h to the
//	    period's end; 10 h = 36,000 s down: 100 × 2,642,400 / 2,678,400 =
//	    98.6559% < 99: 25% of voice 20.00 = -5.00 (rev 1)
//	  fast: 10 probes, 9 at 150 ms and 1 at 300: p90 is the 9th, 150: met
//	  support: T-1 resolved in 3 h; T-2 opened 03-31T22:00, 2 h 59 ago,
//	    not due: 100%: met
//	late (crash before their checkpoint, replayed):
//	  a probe of 03-15 at 400 ms: 11 probes, p90 the 10th (ceil 9.9) =
//	    300 > 200: 5% of sms 5.00 = -0.25, of voice 20.00 = -1.00 (rev 1)
//	  inc-2 ended 03-31T20:00: 2 h + 4 h = 21,600 s: 99.1935%: 10% of
//	    20.00 = -2.00 (uptime voice rev 2)
//	watermark 04-01T05:59:55: T-2 unresolved past 4 h: 1 of 2 = 50%:
//	  20% of sms 5.00 = -1.00 (support sms rev 1)
//	T-2 resolved 04-01T07:00: the period is settled (an hour after its
//	  end): dead-lettered as late; nothing changes
func TestSLACredits(t *testing.T) {
	subs := []rating.Subscription{{Customer: "ann", Plan: "gold", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
	h := pricedHarness(t, slaPlans, "gold", subs, time.Hour, Meter{Name: "voice"}, Meter{Name: "sms"})
	// Probes count, so a late one must be within the dedup horizon (a
	// retry of it must be known): a month and a day here.
	h.cfg.DedupHorizon = 32 * 24 * time.Hour
	h.start()
	at := func(day, hour, minute int) string {
		month := time.March
		if day > 31 {
			month, day = time.April, day-31
		}
		return time.Date(2026, month, day, hour, minute, 0, 0, time.UTC).Format(time.RFC3339)
	}
	rec := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
	rec(`{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":1000}`, at(2, 0, 0))
	rec(`{"id":"s1","customer":"ann","meter":"sms","time":%q,"value":50}`, at(3, 0, 0))
	rec(`{"type":"sla.outage","id":"o1","customer":"ann","outage":"inc-1","time":%q,"end":%q}`, at(10, 0, 0), at(10, 2, 0))
	for i := range 10 {
		latency := 150
		if i == 9 {
			latency = 300
		}
		rec(`{"type":"sla.probe","id":"p%d","customer":"ann","time":%q,"ok":true,"latency_ms":%d}`, i, at(5, i, 0), latency)
	}
	rec(`{"type":"sla.issue","id":"i1","customer":"ann","issue":"T-1","status":"opened","time":%q}`, at(20, 0, 0))
	rec(`{"type":"sla.issue","id":"i2","customer":"ann","issue":"T-1","status":"resolved","time":%q}`, at(20, 3, 0))
	rec(`{"type":"sla.issue","id":"i3","customer":"ann","issue":"T-2","status":"opened","time":%q}`, at(31, 22, 0))
	rec(`{"specversion":"1.0","source":"noc","type":"sla.outage","id":"o2","subject":"ann","time":%q,"data":{"outage":"inc-2"}}`, at(31, 16, 0))
	h.checkpoint(false)
	h.crash() // what was measured is durable
	rec(`{"id":"b1","customer":"bob","meter":"voice","time":%q,"value":1}`, at(32, 1, 0))
	h.checkpoint(false)
	report, err := h.engine.SLA(context.Background(), "ann", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, o := range report.Objectives {
		states = append(states, fmt.Sprintf("%s %s %s%s %s %s", o.Name, o.State, o.Measured, map[bool]string{true: "ms", false: "%"}[o.Unit == "ms"], o.CreditPercent, o.Credit))
	}
	if got, want := strings.Join(states, "; "), "uptime breached 98.6559% 25 -5; fast met 150ms 0 0; support met 100% 0 0"; !report.Closed || got != want {
		t.Errorf("ann's March SLA (closed %v): %s\nwant %s", report.Closed, got, want)
	}
	if _, err := h.engine.SLA(context.Background(), "nobody-on-sla", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)); err != nil {
		t.Errorf("a customer without events on gold: %v, want a report of met objectives", err)
	}
	rec(`{"type":"sla.probe","id":"p-late","customer":"ann","time":%q,"ok":true,"latency_ms":400}`, at(15, 0, 0))
	rec(`{"type":"sla.outage","id":"o3","customer":"ann","outage":"inc-2","time":%q,"end":%q}`, at(31, 16, 0), at(31, 20, 0))
	h.crash()
	h.checkpoint(false)
	rec(`{"id":"b2","customer":"bob","meter":"voice","time":%q,"value":1}`, at(32, 6, 0))
	h.checkpoint(false)
	rec(`{"type":"sla.issue","id":"i4","customer":"ann","issue":"T-2","status":"resolved","time":%q}`, at(32, 7, 0))
	rec(`{"id":"b3","customer":"bob","meter":"voice","time":%q,"value":1}`, at(32, 8, 0))
	h.checkpoint(false)
	if _, err := h.engine.SLA(context.Background(), "ann", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)); !errors.Is(err, ErrNoSLA) || !strings.Contains(err.Error(), "settled") {
		t.Errorf("ann's settled March: %v, want it settled", err)
	}
	h.stop()

	type credit struct {
		amount   string
		revision uint64
	}
	want := map[string]credit{
		"voice|@sla:uptime": {"-2", 2},
		"voice|@sla:fast":   {"-1", 1},
		"sms|@sla:fast":     {"-0.25", 1},
		"sms|@sla:support":  {"-1", 1},
	}
	got := map[string]RatedRow{}
	for _, r := range h.final() {
		if strings.HasPrefix(r.GroupKey, SLAGroupPrefix) {
			if r.Customer != "ann" || !r.WindowStart.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
				t.Errorf("credit row %+v: want ann's March", r)
			}
			got[r.Meter+"|"+r.GroupKey] = r
		}
	}
	for k, w := range want {
		r, ok := got[k]
		if !ok || r.Amount.String() != w.amount || r.Revision != w.revision {
			t.Errorf("%s: %s rev %d, want %s rev %d (%+v)", k, r.Amount, r.Revision, w.amount, w.revision, r)
		}
	}
	if len(got) != len(want) {
		t.Errorf("credit rows %v, want %d", got, len(want))
	}
	if r := got["voice|@sla:uptime"]; r.Quantity.String() != "99.1935" || len(r.Breakdown) != 1 || !strings.Contains(r.Breakdown[0].Description, "credit 10% of the period's voice charge") {
		t.Errorf("uptime's row: quantity %s, breakdown %+v", r.Quantity, r.Breakdown)
	}
	var revisions []string
	for _, r := range h.seen {
		if r.GroupKey == SLAGroupPrefix+"uptime" {
			revisions = append(revisions, fmt.Sprintf("%d:%s", r.Revision, r.Amount))
		}
	}
	if strings.Join(revisions, " ") != "1:-5 2:-2" && strings.Join(revisions, " ") != "2:-2 1:-5" {
		t.Errorf("uptime's revisions %v, want 1:-5 then 2:-2", revisions)
	}
}

// slaAt is a time of March 2026 (days past 31 are April's).
func slaAt(day, hour, minute int) string {
	month := time.March
	if day > 31 {
		month, day = time.April, day-31
	}
	return time.Date(2026, month, day, hour, minute, 0, 0, time.UTC).Format(time.RFC3339)
}

// slaCredits are the credit rows delivered (highest revisions), by
// customer|meter|group.
func slaCredits(h *harness) map[string]RatedRow {
	got := map[string]RatedRow{}
	for _, r := range h.final() {
		if strings.HasPrefix(r.GroupKey, SLAGroupPrefix) {
			got[r.Customer+"|"+r.Meter+"|"+r.GroupKey] = r
		}
	}
	return got
}

// TestSLACreditsUnderRandomCuts: the same SLA events and usage, with
// checkpoints and crashes at 25 random points (seeds 1..25), end with the
// credits of a run without any: none depends on where barriers fall. From
// an independent review; red before issues falling due, resolutions after
// settling and charges of settled periods were made independent of cuts.
func TestSLACreditsUnderRandomCuts(t *testing.T) {
	var recs []string
	add := func(format string, args ...any) { recs = append(recs, fmt.Sprintf(format, args...)) }
	add(`{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":1000}`, slaAt(2, 0, 0))
	add(`{"id":"s1","customer":"ann","meter":"sms","time":%q,"value":50}`, slaAt(3, 0, 0))
	add(`{"type":"sla.outage","id":"o1","customer":"ann","outage":"inc-1","time":%q,"end":%q}`, slaAt(10, 0, 0), slaAt(10, 2, 0))
	for i := range 10 {
		add(`{"type":"sla.probe","id":"p%d","customer":"ann","time":%q,"ok":true,"latency_ms":%d}`, i, slaAt(5, i, 0), 150+150*(i/9))
	}
	add(`{"type":"sla.issue","id":"i1","customer":"ann","issue":"T-1","status":"opened","time":%q}`, slaAt(20, 0, 0))
	add(`{"type":"sla.issue","id":"i2","customer":"ann","issue":"T-1","status":"resolved","time":%q}`, slaAt(20, 5, 0))
	add(`{"type":"sla.issue","id":"i3","customer":"ann","issue":"T-2","status":"opened","time":%q}`, slaAt(31, 22, 0))
	add(`{"type":"sla.outage","id":"o2","customer":"ann","outage":"inc-2","time":%q}`, slaAt(31, 16, 0))
	add(`{"id":"b0","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 0, 20))
	add(`{"type":"sla.probe","id":"p-late","customer":"ann","time":%q,"ok":true,"latency_ms":400}`, slaAt(31, 23, 0))
	add(`{"id":"v2","customer":"ann","meter":"voice","time":%q,"value":500}`, slaAt(31, 23, 30))
	add(`{"id":"b1","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 0, 40))
	add(`{"type":"sla.outage","id":"o3","customer":"ann","outage":"inc-2","time":%q,"end":%q}`, slaAt(31, 16, 0), slaAt(31, 20, 0))
	add(`{"id":"b2","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 1, 30))
	add(`{"type":"sla.issue","id":"i4","customer":"ann","issue":"T-2","status":"resolved","time":%q}`, slaAt(32, 1, 0))
	add(`{"id":"b3","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 6, 0))
	run := func(seed uint64) string {
		rng := rand.New(rand.NewPCG(seed, 1))
		subs := []rating.Subscription{{Customer: "ann", Plan: "gold", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
		h := pricedHarness(t, slaPlans, "gold", subs, time.Hour, Meter{Name: "voice"}, Meter{Name: "sms"})
		h.cfg.DedupHorizon = 32 * 24 * time.Hour // the late probe is within it
		h.start()
		for _, r := range recs {
			h.src.append(0, []byte(r))
			if seed != 0 {
				switch rng.IntN(4) {
				case 0:
					h.checkpoint(false)
				case 1:
					h.crash()
				}
			}
		}
		h.checkpoint(false)
		h.stop()
		var out []string
		for k, r := range slaCredits(h) {
			out = append(out, k+" "+r.Amount.String())
		}
		slices.Sort(out)
		return strings.Join(out, ", ")
	}
	want := run(0)
	t.Logf("without cuts: %s", want)
	for seed := uint64(1); seed <= 25; seed++ {
		if got := run(seed); got != want {
			t.Errorf("seed %d: %s", seed, got)
		}
	}
}

// TestSLASettledPeriodTakesNoEvents: a resolution arriving when its
// period is settled at the watermark is late, although the period is
// still in memory (kept for its open issue), and the issue falls due at
// the barrier that passes it (from a review: a resolution was accepted
// while no barrier had evicted the period).
func TestSLASettledPeriodTakesNoEvents(t *testing.T) {
	subs := []rating.Subscription{{Customer: "ann", Plan: "gold", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
	h := pricedHarness(t, slaPlans, "gold", subs, time.Hour, Meter{Name: "voice"}, Meter{Name: "sms"})
	h.start()
	rec := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
	rec(`{"id":"s1","customer":"ann","meter":"sms","time":%q,"value":50}`, slaAt(3, 0, 0))
	rec(`{"type":"sla.issue","id":"i1","customer":"ann","issue":"T-1","status":"opened","time":%q}`, slaAt(31, 23, 0))
	rec(`{"id":"b1","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 1, 30))
	h.checkpoint(false) // March settles (an hour past its end); T-1 is due at 03:00
	if got := slaCredits(h)["ann|sms|@sla:support"]; !got.Amount.IsZero() {
		t.Errorf("support credit %s before T-1 is due, want none", got.Amount)
	}
	rec(`{"type":"sla.issue","id":"i2","customer":"ann","issue":"T-1","status":"resolved","time":%q}`, slaAt(32, 2, 0))
	rec(`{"id":"b2","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(32, 8, 0))
	_, dead := h.checkpoint(false)
	h.stop()
	if len(dead) != 1 || dead[0].Reason != ReasonLate {
		t.Errorf("dead letters %+v, want the resolution as late", dead)
	}
	if got := slaCredits(h)["ann|sms|@sla:support"]; got.Amount.String() != "-1" {
		t.Errorf("support credit %s, want -1 (T-1 unresolved past 4 h: 20%% of sms's 5.00)", got.Amount)
	}
}

const slaPlansWithBasic = slaPlans + `
  - id: basic
    currency: EUR
    rounding: {decimals: 2}
    meters:
      voice: {model: per_unit, unitPrice: "0.01"}
      sms: {model: per_unit, unitPrice: "0.1"}
`

// TestSLACreditRevokedByPlanChange: a backdated change to a plan without
// objectives revokes a closed period's credit (revised to 0 in the
// credit's own currency), crash or not; and outages with an end far ahead
// fill only the periods the watermark reached (from a review: 20 such
// events stored 41,700 periods).
func TestSLACreditRevokedByPlanChange(t *testing.T) {
	for _, crash := range []bool{false, true} {
		subs := []rating.Subscription{{Customer: "ann", Plan: "gold", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
		h := pricedHarness(t, slaPlansWithBasic, "gold", subs, time.Hour, Meter{Name: "voice"}, Meter{Name: "sms"})
		h.cfg.FinalizeAfter = 10 * 24 * time.Hour
		h.start()
		rec := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
		rec(`{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":1000}`, slaAt(2, 0, 0))
		rec(`{"type":"sla.outage","id":"o1","customer":"ann","outage":"inc-1","time":%q,"end":%q}`, slaAt(10, 0, 0), slaAt(10, 10, 0))
		for i := range 20 {
			rec(`{"type":"sla.outage","id":"f%d","customer":"far%d","outage":"inc-9","time":%q,"end":"2199-12-01T00:00:00Z"}`, i, i, slaAt(10, 0, 0))
		}
		rec(`{"id":"b1","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(34, 0, 0))
		h.checkpoint(false)
		if r := slaCredits(h)["ann|voice|@sla:uptime"]; r.Amount.String() != "-5" { // 10 h: 98.6559%: 25% of 10 + the flat fee 10
			t.Fatalf("uptime credit %s, want -5", r.Amount)
		}
		rec(`{"type":"subscription.plan_changed","id":"pc","customer":"ann","plan":"basic","time":%q}`, slaAt(20, 0, 0))
		if crash {
			h.checkpoint(false)
			h.crash()
		}
		rec(`{"id":"b2","customer":"bob","meter":"voice","time":%q,"value":1}`, slaAt(34, 1, 0))
		h.checkpoint(false)
		h.stop()
		r := slaCredits(h)["ann|voice|@sla:uptime"]
		if !r.Amount.IsZero() || r.Revision != 2 || r.Currency != "EUR" {
			t.Errorf("crash %v: the revoked credit: %s rev %d %q, want 0 rev 2 EUR", crash, r.Amount, r.Revision, r.Currency)
		}
		store, err := state.Open(h.dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		store.SLAPeriods(func(k, v []byte) error { n++; return nil })
		store.Close()
		if n > 2*21 { // March and April of ann and the 20
			t.Errorf("crash %v: %d SLA periods stored for outages ending in 2199", crash, n)
		}
	}
}

const slaHourlyAndMonthly = `
plans:
  - id: gold
    currency: EUR
    rounding: {decimals: 2}
    meters:
      voice: {model: per_unit, unitPrice: "0.01", flatFee: "10"}
      data: {model: per_unit, unitPrice: "0.01"}
    sla:
      - name: uptime
        kind: availability
        target: "99.9"
        credits: [{below: "99.9", credit: "10"}, {below: "99", credit: "25"}]
        creditOn: [voice]
`

// TestSLAFirstEventAfterAMeterLeftTheStore: an outage reported after
// voice's hourly period left the store, but before the SLA period's latest
// settle end (data's monthly window), is credited on voice's charge,
// whether or not an earlier SLA event had created the SLA period (from a
// review: it was credited on 0).
func TestSLAFirstEventAfterAMeterLeftTheStore(t *testing.T) {
	for _, early := range []bool{true, false} {
		subs := []rating.Subscription{{Customer: "ann", Plan: "gold", Start: time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC)}}
		h := pricedHarness(t, slaHourlyAndMonthly, "gold", subs, time.Hour, Meter{Name: "voice"}, Meter{Name: "data", Window: "MONTH"})
		h.cfg.Customers = []Customer{{ID: "ann", BillingAnchorDay: 15}, {ID: "bob", BillingAnchorDay: 15}}
		h.cfg.DedupHorizon = 60 * 24 * time.Hour
		h.start()
		rec := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
		d := func(m time.Month, day, hour int) string {
			return time.Date(2026, m, day, hour, 0, 0, 0, time.UTC).Format(time.RFC3339)
		}
		rec(`{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":1000}`, d(3, 16, 0))
		rec(`{"id":"d1","customer":"ann","meter":"data","time":%q,"value":1}`, d(4, 2, 0))
		if early {
			rec(`{"type":"sla.probe","id":"p1","customer":"ann","time":%q,"ok":true,"latency_ms":10}`, d(3, 17, 0))
		}
		rec(`{"id":"b1","customer":"bob","meter":"voice","time":%q,"value":1}`, d(4, 20, 0))
		h.checkpoint(false)
		// 10 h of March 20th, reported when the SLA period (settling May 1st) is still open.
		rec(`{"type":"sla.outage","id":"o1","customer":"ann","outage":"inc-1","time":%q,"end":%q}`, d(3, 20, 0), d(3, 20, 10))
		rec(`{"id":"b2","customer":"bob","meter":"voice","time":%q,"value":1}`, d(5, 2, 0))
		h.checkpoint(false)
		h.stop()
		if r := slaCredits(h)["ann|voice|@sla:uptime"]; r.Amount.String() != "-5" {
			t.Errorf("early SLA event %v: uptime credit %q, want -5 (25%% of 20.00)", early, r.Amount)
		}
	}
}
