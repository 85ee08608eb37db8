package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

const statementPlans = `
plans:
  - id: pro
    currency: EUR
    rounding: {decimals: 2}
    meters:
      voice:
        model: graduated
        freeAllowance: "100"
        tiers: [{upTo: "1000", unitPrice: "0.01"}, {unitPrice: "0.005"}]
        flatFee: "10"
      sms: {model: per_unit, unitPrice: "0.1", minimumCommitment: "8"}
    sla:
      - name: uptime
        kind: availability
        target: "99.9"
        credits: [{below: "99.9", credit: "10"}]
        creditOn: [voice]
`

// TestStatementAddsUpToTheRows: ann's March, worked by hand, from live
// state and from the rows, both adding up to the rows to the cent:
//
//	voice: 700 (uk) + 900 (fr) = 1600 s: 100 free, then the tiers count
//	       the 1500 charged: 1000 at 0.01 = 10.00, 500 at 0.005 = 2.50:
//	       12.50; flat fee 10.00
//	sms:   30 at 0.1 = 3.00; commitment 8: true-up 5.00
//	uptime: a 2 h outage: 99.7312% < 99.9: 10% of voice's 22.50 = -2.25
//	total: 12.50 + 10 + 3 + 5 - 2.25 = 28.25
//
// The live statement has one usage line per meter; the rows' splits it by
// group.
func TestStatementAddsUpToTheRows(t *testing.T) {
	subs := []rating.Subscription{{Customer: "ann", Plan: "pro", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
	h := pricedHarness(t, statementPlans, "pro", subs, time.Hour, Meter{Name: "voice", GroupBy: []string{"destination"}, Unit: "seconds"}, Meter{Name: "sms"})
	h.start()
	at := func(day, hour int) string {
		return time.Date(2026, 3, day, hour, 0, 0, 0, time.UTC).Format(time.RFC3339)
	}
	rec := func(format string, args ...any) { h.src.append(0, fmt.Appendf(nil, format, args...)) }
	rec(`{"id":"v1","customer":"ann","meter":"voice","time":%q,"value":700,"dims":{"destination":"uk"}}`, at(2, 0))
	rec(`{"id":"v2","customer":"ann","meter":"voice","time":%q,"value":900,"dims":{"destination":"fr"}}`, at(3, 0))
	rec(`{"id":"s1","customer":"ann","meter":"sms","time":%q,"value":30}`, at(4, 0))
	rec(`{"type":"sla.outage","id":"o1","customer":"ann","outage":"inc-1","time":%q,"end":%q}`, at(10, 0), at(10, 2))
	h.checkpoint(false)
	rec(`{"id":"b1","customer":"bob","meter":"sms","time":"2026-04-01T00:30:00Z","value":1}`)
	h.checkpoint(false)

	st, err := h.engine.Statement(context.Background(), "ann", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var rows []RatedRow
	for _, r := range h.final() {
		rows = append(rows, r)
	}
	offline, err := BuildStatement("ann", st.PeriodStart, st.PeriodEnd, rows, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	describe := func(st Statement) string {
		var lines []string
		for _, l := range st.Lines {
			lines = append(lines, fmt.Sprintf("%s %s%s %s", l.Kind, l.Meter, map[bool]string{true: "/" + l.Objective, false: ""}[l.Objective != ""], l.Amount))
		}
		return strings.Join(lines, "; ") + fmt.Sprintf(" = %s %s final=%v", st.Total, st.Currency, st.Final)
	}
	want := "usage sms 3; usage voice 12.5; fee sms 5; fee voice 10; credit voice/uptime -2.25 = 28.25 EUR final=true"
	for name, s := range map[string]Statement{"live": st, "from the rows": offline} {
		if got := describe(s); got != want {
			t.Errorf("%s: %s\nwant %s", name, got, want)
		}
	}
	if voice := offline.Lines[1]; len(voice.Groups) != 2 || voice.Groups[0].GroupKey != "destination=fr" || !voice.Groups[0].Quantity.Equal(decimal.NewFromInt(900)) || len(voice.Breakdown) == 0 {
		t.Errorf("voice line from the rows %+v: want two groups and the breakdown", voice)
	}
	if voice := st.Lines[1]; !strings.Contains(voice.Explanation, "1600 seconds of voice") || len(voice.Breakdown) != 3 {
		t.Errorf("live voice line %+v: want 1600 seconds and the breakdown (allowance, two tiers)", voice)
	}
	if !strings.Contains(st.Lines[4].Explanation, "availability 99.7312%") {
		t.Errorf("credit explanation %q", st.Lines[4].Explanation)
	}
	h.stop()
}

// TestLiveStatementOfAPeriodLeftMemory: with finalizeAfter a closed period
// leaves memory reviseHorizon after it settles, long before it is final;
// the live statement then answers ErrPeriodSettled (the rows have it)
// rather than add up what is left in memory (a review saw -2.25 for a
// period whose rows add up to 28.25).
func TestLiveStatementOfAPeriodLeftMemory(t *testing.T) {
	subs := []rating.Subscription{{Customer: "ann", Plan: "pro", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}}
	h := pricedHarness(t, statementPlans, "pro", subs, time.Hour, Meter{Name: "voice", GroupBy: []string{"destination"}}, Meter{Name: "sms"})
	h.cfg.FinalizeAfter = 10 * 24 * time.Hour
	h.start()
	h.src.append(0, []byte(`{"id":"v1","customer":"ann","meter":"voice","time":"2026-03-02T00:00:00Z","value":700,"dims":{"destination":"uk"}}`))
	h.src.append(0, []byte(`{"id":"b1","customer":"bob","meter":"sms","time":"2026-04-01T00:30:00Z","value":1}`))
	h.checkpoint(false)
	march := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	if st, err := h.engine.Statement(context.Background(), "ann", march); err != nil || !st.Final || !st.Total.Equal(decimal.RequireFromString("24")) {
		t.Errorf("March just closed: %v, total %s final %v; want 24 (600 of voice past the allowance 6, its fee 10, sms's commitment 8), final", err, st.Total, st.Final)
	}
	if st, err := h.engine.Statement(context.Background(), "nobody", march); err != nil || st.Final || len(st.Lines) != 0 {
		t.Errorf("a customer without rows: %+v, %v; want an empty statement, not final", st, err)
	}
	h.src.append(0, []byte(`{"id":"b2","customer":"bob","meter":"sms","time":"2026-04-03T00:30:00Z","value":1}`))
	h.checkpoint(false)
	if _, err := h.engine.Statement(context.Background(), "ann", march); !errors.Is(err, ErrPeriodSettled) {
		t.Errorf("March left memory: %v, want ErrPeriodSettled", err)
	}
	h.stop()
}
