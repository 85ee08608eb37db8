package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// TestWindowsAcrossPeriodsGrid runs every window size x alignment x zone x
// anchor day through the engine, with crashes, and checks the rule for
// windows that do not nest in their billing period against a computation of
// billing periods written here (not the engine's): each window is charged
// whole in the period its start falls in, every record is counted once,
// nothing is dead-lettered, and each period whose windows have all closed
// has its fee row, whose quantity is the sum of those windows.
func TestWindowsAcrossPeriodsGrid(t *testing.T) {
	windows := []string{"30m", "HOUR", "DAY", "MONTH"}
	aligns := []string{"UTC", "customer"}
	zones := []string{"UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"}
	anchors := []int{1, 15, 28}
	if testing.Short() {
		windows, zones = []string{"DAY", "MONTH"}, []string{"UTC", "America/New_York"}
	}
	plan, err := rating.Parse([]byte(`
id: grid
currency: EUR
rounding: {decimals: 2}
meters:
  u: {model: per_unit, unitPrice: "1", flatFee: "10"}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, window := range windows {
		for _, align := range aligns {
			for _, zone := range zones {
				for _, anchor := range anchors {
					name := fmt.Sprintf("%s/%s/%s/%d", window, align, zone, anchor)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						checkPeriodGrid(t, plan, window, align, zone, anchor)
					})
				}
			}
		}
	}
}

func checkPeriodGrid(t *testing.T, plan *rating.Plan, window, align, zone string, anchor int) {
	loc, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 1)
	h.cfg.AllowedLateness = 0
	h.cfg.Customers = []Customer{{ID: "c", Timezone: zone, BillingAnchorDay: anchor}}
	h.rater = planRater{plan: plan}
	h.meters, err = CompileMeters([]Meter{{Name: "u", Aggregation: AggSum, Window: window, Align: align}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.start()
	defer h.cancel()

	// One unit every 5h17m from January 10th to April 20th: every hour of
	// the day, across DST changes and several billing periods.
	first := time.Date(2026, 1, 10, 0, 0, 0, 0, time.UTC)
	last := time.Date(2026, 4, 20, 0, 0, 0, 0, time.UTC)
	records := 0
	for at := first; at.Before(last); at = at.Add(5*time.Hour + 17*time.Minute) {
		records++
		h.src.append(0, []byte(fmt.Sprintf(`{"id":"%d","customer":"c","meter":"u","time":%q,"value":1}`, records, at.Format(time.RFC3339))))
		switch {
		case records%97 == 0:
			h.crash()
		case records%20 == 0:
			h.checkpoint(false)
		}
	}
	_, dead := h.checkpoint(false)
	for _, d := range h.sink.letters {
		t.Errorf("dead letter %s at offset %d: %s", d.Reason, d.Offset, d.Detail)
	}
	_ = dead
	h.stop()
	h.fresh()
	watermark := h.engine.Stats().Watermark

	// The billing period holding t, computed here.
	period := func(at time.Time) (time.Time, time.Time) {
		l := at.In(loc)
		start := time.Date(l.Year(), l.Month(), anchor, 0, 0, 0, 0, loc)
		if l.Day() < anchor {
			start = time.Date(l.Year(), l.Month()-1, anchor, 0, 0, 0, 0, loc)
		}
		return start, start.AddDate(0, 1, 0)
	}
	type periodSum struct {
		quantity decimal.Decimal
		lastEnd  time.Time
		fee      *RatedRow
	}
	periods := make(map[int64]*periodSum) // by start, Unix ns
	get := func(start time.Time) *periodSum {
		p := periods[start.UnixNano()]
		if p == nil {
			p = &periodSum{quantity: decimal.Zero}
			periods[start.UnixNano()] = p
		}
		return p
	}
	total := decimal.Zero
	for _, r := range h.final() {
		if r.GroupKey == PeriodFeeGroup {
			row := r
			p := get(r.WindowStart)
			p.fee = &row
			if start, end := period(r.WindowStart); !start.Equal(r.WindowStart) || !end.Equal(r.WindowEnd) {
				t.Errorf("fee row for %s..%s, but the period there is %s..%s", r.WindowStart, r.WindowEnd, start, end)
			}
			continue
		}
		total = total.Add(r.Quantity)
		if !r.Amount.Equal(r.Quantity) {
			t.Errorf("window %s: amount %s for quantity %s at 1 a unit", r.WindowStart, r.Amount, r.Quantity)
		}
		start, _ := period(r.WindowStart)
		p := get(start)
		p.quantity = p.quantity.Add(r.Quantity)
		if r.WindowEnd.After(p.lastEnd) {
			p.lastEnd = r.WindowEnd
		}
	}
	if !total.Equal(decimal.NewFromInt(int64(records))) {
		t.Errorf("windows hold %s units, %d were sent", total, records)
	}
	for startNs, p := range periods {
		start := time.Unix(0, startNs).In(loc)
		settled := !p.lastEnd.IsZero() && !p.lastEnd.After(watermark)
		switch {
		case settled && p.fee == nil:
			t.Errorf("period from %s: its windows closed by %s (watermark %s) but it has no fee row", start, p.lastEnd, watermark)
		case p.fee != nil && !p.fee.Quantity.Equal(p.quantity):
			t.Errorf("period from %s: fee row quantity %s, its windows hold %s", start, p.fee.Quantity, p.quantity)
		case p.fee != nil && p.lastEnd.After(watermark):
			t.Errorf("period from %s: fee row emitted before its last window (ending %s) closed at watermark %s", start, p.lastEnd, watermark)
		}
	}
}
