package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

// TestRateOffline rates a file with a tiered plan. By hand: ann sends 5
// distinct SMS (one duplicate). The first 2 are free, the next 2 cost 0.10,
// the fifth 0.05: 0.25 for the period, spread over her minute windows as
// 0 | 0 | 0.10 | 0.10 | 0.05. bob's one SMS is free. The mms line has no
// meter and is reported, not rated.
func TestRateOffline(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--plans", "../../testdata/rate/plan.yaml", "--input", "../../testdata/rate/usage.jsonl"}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := runRate(context.Background(), args, &stdout, &stderr, log); err != nil {
		t.Fatalf("tally rate: %v\n%s", err, stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			Customer, Quantity, Amount string
			WindowStart                string `json:"window_start"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("row %q: %v", line, err)
		}
		got = append(got, r.Customer+" "+r.WindowStart[11:16]+" "+r.Quantity+" "+r.Amount)
	}
	want := []string{"ann 10:00 2 0", "ann 10:01 1 0.1", "ann 10:02 1 0.1", "ann 10:03 1 0.05", "bob 10:00 1 0"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(stderr.String(), "line 8: unknown_meter") || !strings.Contains(stderr.String(), "1 of 8 lines not rated") {
		t.Errorf("stderr does not report the unrated line:\n%s", stderr.String())
	}

	stdout.Reset()
	stderr.Reset()
	if err := runRate(context.Background(), append(args, "--summary"), &stdout, &stderr, log); err != nil {
		t.Fatal(err)
	}
	summary := stdout.String()
	for _, want := range []string{`"amount":"0.25","count":5,"currency":"EUR","customer":"ann","fees":"0","meter":"sms"`,
		`"amount":"0","count":1,"currency":"EUR","customer":"bob","fees":"0","meter":"sms"`} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %s:\n%s", want, summary)
		}
	}
}

// TestRateSubscriptionsAndVersions: each window is priced by the plan of the
// customer's subscription at its start, in the version then in force. ann:
// 0.10 (basic v1), 0.08 (basic v2 from the 15th), 0.05 (pro from the 20th).
// bob's subscription ended on the 16th and eve has none: with two plans and
// no default plan, their usage is dead-lettered, not rated for free.
func TestRateSubscriptionsAndVersions(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--plans", "../../testdata/rate/catalog.yaml", "--subscriptions", "../../testdata/rate/subscriptions.yaml",
		"--input", "../../testdata/rate/usage2.jsonl"}
	if err := runRate(context.Background(), args, &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("tally rate: %v\n%s", err, stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			Customer, Amount string
			WindowStart      string `json:"window_start"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("row %q: %v", line, err)
		}
		got = append(got, r.Customer+" "+r.WindowStart[:10]+" "+r.Amount)
	}
	want := []string{"ann 2026-03-14 0.1", "ann 2026-03-15 0.08", "ann 2026-03-20 0.05", "bob 2026-03-15 0.08"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, want := range []string{"line 5: no_subscription: meter sms: customer bob has no subscription",
		"line 6: no_subscription: meter sms: customer eve has no subscription", "2 of 6 lines not rated"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestRateProratesPeriodFees: ann is on basic (10.00 a month) for 10 of
// March's 31 days and on pro (30.00 a month, at least 6.00 of usage) for 21.
// Flat: (10 x 10 + 30 x 21) / 31 = 23.548… -> 23.55. Commitment: 6 x 21/31
// = 4.06; usage charged 10 x 0.10 + 10 x 0.05 = 1.50; true-up 2.56. The
// March @period row is 26.11. ann has been on basic since January 1st, so
// January and February owe basic's flat fee too, usage or not: every period
// from the subscription's start owes its fee row, whatever the checkpoint
// timing (before, only the period at the first checkpoint's watermark did).
func TestRateProratesPeriodFees(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--plans", "../../testdata/rate/fees_catalog.yaml", "--subscriptions", "../../testdata/rate/fees_subscriptions.yaml",
		"--input", "../../testdata/rate/fees_usage.jsonl"}
	if err := runRate(context.Background(), args, &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("tally rate: %v\n%s", err, stderr.String())
	}
	var fees []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			GroupKey    string `json:"group_key"`
			WindowStart string `json:"window_start"`
			Amount      string
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.GroupKey == "@period" {
			fees = append(fees, r.WindowStart[:10]+" "+r.Amount)
		}
	}
	if strings.Join(fees, ";") != "2026-01-01 10;2026-02-01 10;2026-03-01 26.11" {
		t.Errorf("period fee rows %v, want January, February and March, not April (still open)\n%s", fees, stdout.String())
	}
}

// TestRateSubscriptionEvents drives subscriptions with events in the usage
// stream (no configured subscriptions). By hand, March: ann is on basic
// (10.00 flat, 0.10 per SMS) until the 11th, then on pro (30.00 flat, 0.05,
// at least 6.00 a month). Her 10 SMS on the 5th cost 1.00 (basic), her 10 on
// the 20th 0.50 (pro). Her fee: flat (10 x 10 + 30 x 21) / 31 = 23.55,
// commitment 6 x 21/31 = 4.06 less 1.50 charged: 2.56; 26.11 in all. bob is
// on pro from the 1st, cancelled on the 16th (the retried cancel counts
// once) and sends nothing: flat 30 x 15/31 = 14.52, commitment 6 x 15/31 =
// 2.90 none of it used: 17.42, a fee row without usage. carol has no
// subscription and there is no default plan: dead-lettered; dan's events
// name no known plan, or none: dead-lettered too.
func TestRateSubscriptionEvents(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--plans", "../../testdata/rate/fees_catalog.yaml", "--input", "../../testdata/rate/sub_events.jsonl"}
	if err := runRate(context.Background(), args, &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("tally rate: %v\n%s", err, stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			Customer, Amount string
			GroupKey         string `json:"group_key"`
			WindowStart      string `json:"window_start"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.GroupKey == "" {
			r.GroupKey = "-"
		}
		got = append(got, r.Customer+" "+r.GroupKey+" "+r.WindowStart[:10]+" "+r.Amount)
	}
	want := []string{"ann @period 2026-03-01 26.11", "ann - 2026-03-05 1", "ann - 2026-03-20 0.5", "ann - 2026-04-01 0.05", "bob @period 2026-03-01 17.42"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, want := range []string{"line 4: no_subscription: meter sms: customer carol has no subscription",
		`line 9: invalid_field: subscription.created: no plan "gold"`, "line 10: missing_field: subscription.created has no plan",
		"3 of 11 lines not rated"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestRateUntilClosesPeriods: with --until, the end of the input takes the
// watermark to that time, so April closes: its window is final and its fee
// row comes, 30.00 flat on pro plus the commitment true-up 6.00 - 0.05 =
// 5.95: 35.95. Without --until April stays open and has no fee row.
func TestRateUntilClosesPeriods(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--plans", "../../testdata/rate/fees_catalog.yaml", "--subscriptions", "../../testdata/rate/fees_subscriptions.yaml",
		"--input", "../../testdata/rate/fees_usage.jsonl", "--until", "2026-05-01T00:00:00Z"}
	if err := runRate(context.Background(), args, &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatalf("tally rate: %v\n%s", err, stderr.String())
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			GroupKey    string `json:"group_key"`
			WindowStart string `json:"window_start"`
			Amount      string
			Final       bool
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %s final=%v", r.GroupKey, r.WindowStart[:10], r.Amount, r.Final))
	}
	want := []string{" 2026-03-05 1 final=true", " 2026-03-20 0.5 final=true", " 2026-04-01 0.05 final=true",
		"@period 2026-01-01 10 final=true", "@period 2026-02-01 10 final=true",
		"@period 2026-03-01 26.11 final=true", "@period 2026-04-01 35.95 final=true"}
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The summary is the sum of each period's rows, fee rows included:
	// January and February are fee rows alone (they left the engine's
	// memory long before the end of the input), March 1 + 0.50 + 26.11,
	// April 0.05 + 35.95.
	stdout.Reset()
	if err := runRate(context.Background(), append(args, "--summary"), &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	var periods []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var p struct {
			Start        string `json:"period_start"`
			Amount, Fees string
			Quantity     string
		}
		if err := json.Unmarshal([]byte(line), &p); err != nil {
			t.Fatal(err)
		}
		periods = append(periods, fmt.Sprintf("%s quantity=%s amount=%s fees=%s", p.Start[:10], p.Quantity, p.Amount, p.Fees))
	}
	wantPeriods := []string{"2026-01-01 quantity=0 amount=10 fees=10", "2026-02-01 quantity=0 amount=10 fees=10",
		"2026-03-01 quantity=20 amount=27.61 fees=26.11", "2026-04-01 quantity=1 amount=36 fees=35.95"}
	if strings.Join(periods, "\n") != strings.Join(wantPeriods, "\n") {
		t.Errorf("summary:\n%s\nwant:\n%s", strings.Join(periods, "\n"), strings.Join(wantPeriods, "\n"))
	}

	if err := runRate(context.Background(), []string{"--plans", "x", "--input", "y", "--until", "May"}, io.Discard, io.Discard, nil); err == nil ||
		!strings.Contains(err.Error(), "--until") {
		t.Errorf("a bad --until: %v", err)
	}
}

// TestRateSkewFromExportStamps: with maxFutureSkew, a JSON-lines file with
// a sidecar of Kafka timestamps (what tally audit exports) refuses records
// timed too far past their stamp, as the live run did when it read them;
// without the sidecar, today's wall clock decides and a record of last
// March is accepted.
func TestRateSkewFromExportStamps(t *testing.T) {
	dir := t.TempDir()
	input := filepath.Join(dir, "export.jsonl")
	if err := os.WriteFile(input, []byte(`{"id":"1","customer":"ann","meter":"sms","time":"2026-03-01T10:00:00Z","value":1}
{"id":"2","customer":"ann","meter":"sms","time":"2026-03-01T14:00:00Z","value":1}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	config := writeFile(t, "tally.yaml", "maxFutureSkew: 1h\n")
	args := []string{"--plans", "../../testdata/rate/plan.yaml", "--input", input, "--config", config}
	rate := func() string {
		var stdout, stderr bytes.Buffer
		if err := runRate(context.Background(), args, &stdout, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatalf("tally rate: %v\n%s", err, stderr.String())
		}
		return stderr.String()
	}
	if out := rate(); strings.Contains(out, "time_out_of_range") {
		t.Errorf("without stamps a record of March was refused by today's clock:\n%s", out)
	}
	// Produced at 10:00 both: the 14:00 record was 4 hours ahead.
	if err := os.WriteFile(input+".times", []byte("2026-03-01T10:00:00Z\n2026-03-01T10:00:01Z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := rate(); !strings.Contains(out, "line 2: time_out_of_range") || strings.Contains(out, "line 1:") {
		t.Errorf("with stamps, want line 2 refused as time_out_of_range:\n%s", out)
	}
	if err := os.WriteFile(input+".times", []byte("2026-03-01T10:00:00Z\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if err := runRate(context.Background(), args, io.Discard, &stderr, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "1 times for 2 records") {
		t.Errorf("a sidecar of the wrong length: %v", err)
	}
}

// TestStatementOffline: `tally statement` rates the file and prints ann's
// March (worked by hand in engine's TestStatementAddsUpToTheRows: voice
// 12.50 and its flat fee 10, sms 3 and its true-up 5, an SLA credit of
// -2.25: 28.25 EUR), as JSON whose total is the rows' (tally rate), and as
// an HTML page.
func TestStatementOffline(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	args := []string{"--plans", "../../testdata/statement/plans.yaml", "--config", "../../testdata/statement/tally.yaml",
		"--input", "../../testdata/statement/usage.jsonl"}
	var stdout, stderr bytes.Buffer
	if err := runStatement(context.Background(), append(args, "--customer", "ann", "--period", "2026-03"), &stdout, &stderr, log); err != nil {
		t.Fatalf("tally statement: %v\n%s", err, stderr.String())
	}
	var st struct {
		Total, Currency string
		Lines           []struct{ Kind, Meter, Amount, Explanation string }
	}
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		t.Fatalf("%v:\n%s", err, stdout.String())
	}
	var lines []string
	for _, l := range st.Lines {
		lines = append(lines, l.Kind+" "+l.Meter+" "+l.Amount)
	}
	if got := strings.Join(lines, "; ") + " = " + st.Total + " " + st.Currency; got != "usage sms 3; usage voice 12.5; fee sms 5; fee voice 10; credit voice -2.25 = 28.25 EUR" {
		t.Errorf("statement: %s", got)
	}
	// The rows' own total, from tally rate with the same watermark.
	stdout.Reset()
	if err := runRate(context.Background(), append(args, "--until", "2026-04-01T00:00:00Z"), &stdout, &stderr, log); err != nil {
		t.Fatal(err)
	}
	var rows decimal.Decimal
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r struct {
			Customer, Amount string
			WindowStart      string `json:"window_start"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Customer == "ann" && strings.HasPrefix(r.WindowStart, "2026-03") {
			rows = rows.Add(decimal.RequireFromString(r.Amount))
		}
	}
	if rows.String() != st.Total {
		t.Errorf("ann's March rows add up to %s, the statement to %s", rows, st.Total)
	}
	stdout.Reset()
	if err := runStatement(context.Background(), append(args, "--customer", "ann", "--period", "2026-03", "--format", "html"), &stdout, &stderr, log); err != nil {
		t.Fatal(err)
	}
	page := stdout.String()
	for _, want := range []string{`<td class="n" id="total">28.25 EUR</td>`, "1 March 2026 to 31 March 2026", "SLA uptime: availability 99.7312%", "destination=fr"} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q:\n%s", want, page)
		}
	}
}

// TestRateCSV: usage.csv holds usage.jsonl's records as CSV CDR lines
// (a header, local times, one JSON record among them): tally rate gives
// the same rows and reports the same unrated line.
func TestRateCSV(t *testing.T) {
	rate := func(input string, extra ...string) (string, string) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--plans", "../../testdata/rate/plan.yaml", "--input", input}, extra...)
		if err := runRate(context.Background(), args, &stdout, &stderr, quietLog()); err != nil {
			t.Fatalf("tally rate %s: %v\n%s", input, err, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	want, _ := rate("../../testdata/rate/usage.jsonl")
	got, stderr := rate("../../testdata/rate/usage.csv", "--config", "../../testdata/rate/csv.yaml")
	if got != want || want == "" {
		t.Errorf("rows from CSV:\n%s\nfrom JSON:\n%s", got, want)
	}
	if !strings.Contains(stderr, "line 9: unknown_meter") || !strings.Contains(stderr, "1 of 9 lines not rated") {
		t.Errorf("stderr does not report the unrated line:\n%s", stderr)
	}
}
