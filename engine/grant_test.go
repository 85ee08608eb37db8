package engine

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

const grantsPlan = `
plans:
  - id: prepaid
    currency: EUR
    rounding: {decimals: 2}
    meters:
      sms:
        model: per_unit
        unitPrice: "0"
        entitlement:
          of: grants
          thresholds: [50, {percent: 80, action: throttle}, {percent: 100, action: suspend}]
      data: {model: per_unit, unitPrice: "0.01"}
`

// TestPrepaidGrants draws usage from grants and announces the thresholds
// of the balance, with a crash in the middle. Worked by hand (ann's sms;
// thresholds 50 notify, 80 throttle, 100 suspend of the grants in force):
//
//	03-01 sms 10, no grant: limit 0, every threshold reached: cycle 0
//	      announces 50, 80, 100 (used 0); overage 10
//	03-02 grant g1 100, expires 03-20: 0 of 100 used, under the announced
//	      100: cycle 1, no longer blocked: resume
//	03-03 sms 60: g1 40 left, 60 of 100: cycle 1 announces 50
//	03-04 grant g2 100, no expiry (sent twice: a retry counts once): 60 of
//	      200, under 50: cycle 2, not blocked: nothing
//	03-05 sms 100: g1 (expires first) gives 40, g2 60: 160 of 200 = 80%:
//	      cycle 2 announces 50 and 80 (throttle)
//	      crash
//	03-20 g1 expires at the barrier the watermark passes it (bob's data at
//	      03-20T01:00 moves it): 60 of 100, under 80: cycle 3, no longer
//	      throttled: resume at 03-20
//	03-20T02:00 sms 50: g2 gives 40, overage 10 more (20): 100 of 100:
//	      cycle 3 announces 80 and 100
func TestPrepaidGrants(t *testing.T) {
	h := pricedHarness(t, grantsPlan, "prepaid", nil, time.Hour, Meter{Name: "sms"}, Meter{Name: "data"})
	actions := &captureActions{}
	h.cfg.ActionSinks = []ActionSink{actions}
	h.start()
	day := func(d int, hour int) string {
		return time.Date(2026, 3, d, hour, 0, 0, 0, time.UTC).Format(time.RFC3339)
	}
	sms := func(id string, at string, n int) {
		h.src.append(0, fmt.Appendf(nil, `{"id":%q,"customer":"ann","meter":"sms","time":%q,"value":%d}`, id, at, n))
	}
	sms("s1", day(1, 0), 10)
	h.checkpoint(false)
	h.src.append(0, fmt.Appendf(nil, `{"type":"grant.created","id":"g1","customer":"ann","meter":"sms","time":%q,"value":100,"expires":%q}`, day(2, 0), day(20, 0)))
	sms("s2", day(3, 0), 60)
	g2 := fmt.Appendf(nil, `{"specversion":"1.0","source":"shop","type":"grant.created","id":"g2","subject":"ann","time":%q,"data":{"meter":"sms","value":"100"}}`, day(4, 0))
	h.src.append(0, g2, g2)
	h.checkpoint(false)
	sms("s3", day(5, 0), 100)
	h.checkpoint(false)
	h.crash()
	h.src.append(0, fmt.Appendf(nil, `{"id":"b1","customer":"bob","meter":"data","time":%q,"value":1}`, day(20, 1)))
	h.checkpoint(false)
	sms("s4", day(20, 2), 50)
	h.checkpoint(false)

	ent, err := h.engine.Entitlements(context.Background(), "ann")
	if err != nil {
		t.Fatal(err)
	}
	if len(ent.Entitlements) != 1 {
		t.Fatalf("entitlements %+v, want sms's", ent)
	}
	r := ent.Entitlements[0]
	if !r.Limit.Equal(decimal.NewFromInt(100)) || !r.Used.Equal(decimal.NewFromInt(100)) || r.State != rating.StateSuspended ||
		r.Overage == nil || !r.Overage.Equal(decimal.NewFromInt(20)) || len(r.Grants) != 1 || r.Grants[0].ID != "g2" || !r.Grants[0].Remaining.IsZero() {
		t.Errorf("ann's sms: %+v, want limit 100 (g2 alone), used 100, suspended, overage 20", r)
	}
	check, err := h.engine.CheckEntitlement(context.Background(), "ann", "sms", decimal.NewFromInt(1))
	if err != nil || check.Allowed {
		t.Errorf("check of 1 more sms: %+v, %v; want not allowed", check, err)
	}
	h.stop()

	type want struct {
		action      rating.Action
		used, limit int64
		at          string
	}
	p := "ann|sms|@grants|"
	wants := map[string]want{
		p + "0|limit|50":  {rating.ActionNotify, 0, 0, day(1, 0)},
		p + "0|limit|80":  {rating.ActionThrottle, 0, 0, day(1, 0)},
		p + "0|limit|100": {rating.ActionSuspend, 0, 0, day(1, 0)},
		p + "1|resume":    {rating.ActionResume, 0, 100, day(2, 0)},
		p + "1|limit|50":  {rating.ActionNotify, 60, 100, day(3, 0)},
		p + "2|limit|50":  {rating.ActionNotify, 160, 200, day(5, 0)},
		p + "2|limit|80":  {rating.ActionThrottle, 160, 200, day(5, 0)},
		p + "3|resume":    {rating.ActionResume, 60, 100, day(20, 0)},
		p + "3|limit|80":  {rating.ActionThrottle, 100, 100, day(20, 2)},
		p + "3|limit|100": {rating.ActionSuspend, 100, 100, day(20, 2)},
	}
	got := delivered(t, actions)
	var ids []string
	for id, a := range got {
		ids = append(ids, id)
		w, ok := wants[id]
		if !ok {
			continue
		}
		if a.Action != w.action || !a.Used.Equal(decimal.NewFromInt(w.used)) || !a.Limit.Equal(decimal.NewFromInt(w.limit)) || a.At.Format(time.RFC3339) != w.at || a.Basis != rating.LimitGrants {
			t.Errorf("%s: %s used %s of %s at %s, want %s used %d of %d at %s", id, a.Action, a.Used, a.Limit, a.At.Format(time.RFC3339), w.action, w.used, w.limit, w.at)
		}
	}
	slices.Sort(ids)
	var wantIDs []string
	for id := range wants {
		wantIDs = append(wantIDs, id)
	}
	slices.Sort(wantIDs)
	if !slices.Equal(ids, wantIDs) {
		t.Errorf("actions\n%v\nwant\n%v", ids, wantIDs)
	}
}
