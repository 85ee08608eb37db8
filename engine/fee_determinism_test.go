package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tally-billing/tally/rating"
)

// TestFeeRowsDoNotDependOnCheckpoints rates one input three ways: one
// checkpoint at the end, a checkpoint after every record, and checkpoints
// with crashes in between. Every billing period the watermark passes owes
// its fee row, so the final rows must be the same; before, subscribers
// without usage got fee rows only for the periods holding the watermark at
// some checkpoint.
func TestFeeRowsDoNotDependOnCheckpoints(t *testing.T) {
	catalog, err := rating.ParseCatalog([]byte(`
plans:
  - id: basic
    currency: EUR
    rounding: {decimals: 2}
    meters: {sms: {model: per_unit, unitPrice: "0.10", flatFee: "10", minimumCommitment: "3"}}
`))
	if err != nil {
		t.Fatal(err)
	}
	day := func(month, d int) time.Time { return time.Date(2026, time.Month(month), d, 12, 0, 0, 0, time.UTC) }
	subs, err := rating.NewSubscriptions([]rating.Subscription{
		{Customer: "bob", Plan: "basic", Start: day(1, 15)},
		{Customer: "dan", Plan: "basic", Start: day(3, 1), End: day(4, 10)},
	}, catalog)
	if err != nil {
		t.Fatal(err)
	}
	var records [][]byte
	records = append(records, []byte(fmt.Sprintf(`{"type":"subscription.created","id":"s1","customer":"carol","plan":"basic","time":%q}`, day(2, 10).Format(time.RFC3339))))
	for i, at := 0, day(1, 2); at.Before(day(5, 20)); i, at = i+1, at.Add(61*time.Hour) {
		records = append(records, []byte(fmt.Sprintf(`{"id":"u%d","customer":"ann","meter":"sms","time":%q,"value":1}`, i, at.Format(time.RFC3339))))
	}
	until := day(6, 1)

	run := func(every, crashEvery int) map[string]string {
		h := newHarness(t, 1)
		h.cfg.AllowedLateness = 0
		h.rater = rating.NewPricing(catalog, subs, "basic")
		h.meters, err = CompileMeters([]Meter{{Name: "sms", Aggregation: AggSum, Window: "DAY"}}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		h.start()
		for i, rec := range records {
			h.src.append(0, rec)
			switch {
			case crashEvery > 0 && i%crashEvery == crashEvery-1:
				h.checkpoint(false)
				h.crash()
			case every > 0 && i%every == every-1:
				h.checkpoint(false)
			}
		}
		h.checkpoint(false)
		if _, err := h.engine.AdvanceWatermark(context.Background(), until); err != nil {
			t.Fatal(err)
		}
		h.stop()
		h.fresh()
		out := make(map[string]string)
		for id, r := range h.final() {
			out[id] = fmt.Sprintf("quantity=%s count=%d amount=%s final=%v", r.Quantity, r.Count, r.Amount, r.Final)
		}
		return out
	}
	format := func(rows map[string]string) string {
		var lines []string
		for id, r := range rows {
			lines = append(lines, id+" "+r)
		}
		sort.Strings(lines)
		return strings.Join(lines, "\n")
	}
	once := run(0, 0)
	var fees []string
	for id := range once {
		if strings.Contains(id, PeriodFeeGroup) {
			fees = append(fees, id)
		}
	}
	// bob: January (from the 15th) to May; carol: February to May; dan:
	// March and April; ann has no subscription (the default plan prices her
	// usage and makes her owe no fee).
	if len(fees) != 5+4+2 {
		t.Errorf("%d fee rows, want 11:\n%s", len(fees), format(once))
	}
	for _, tc := range []struct {
		name              string
		every, crashEvery int
	}{{"every record", 1, 0}, {"crashes", 3, 7}} {
		if got := run(tc.every, tc.crashEvery); format(got) != format(once) {
			t.Errorf("%s: rows differ from one checkpoint at the end:\n%s\nwant:\n%s", tc.name, format(got), format(once))
		}
	}
}
