package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"

	"github.com/tally-billing/tally/connectors/file"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/state"
)

// collector keeps the highest revision of every row, and every dead letter.
type collector struct {
	mu      sync.Mutex
	rows    map[string]engine.RatedRow
	letters map[string]engine.DeadLetter
}

func (c *collector) Name() string { return "tally-rate" }

func (c *collector) Write(_ context.Context, rows []engine.RatedRow) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range rows {
		if prev, ok := c.rows[r.Identity()]; !ok || r.Revision >= prev.Revision {
			c.rows[r.Identity()] = r
		}
	}
	return nil
}

type deadCollector struct{ *collector }

func (d deadCollector) Name() string { return "tally-rate-dead" }

func (d deadCollector) WriteDeadLetters(_ context.Context, letters []engine.DeadLetter) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range letters {
		d.letters[fmt.Sprintf("%d", l.Offset)] = l
	}
	return nil
}

// runRate is `tally rate`: it rates a JSON-lines file offline with the
// engine itself (same decoding, windows, dedup, lateness and pricing as
// `tally run` reading the file as one partition) and prints the highest
// revision of every row as JSON lines, sorted; dead letters go to stderr.
func runRate(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("rate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	plans := fs.String("plans", "", "price plan file: one plan, or plans: [...] with versions (required)")
	subscriptions := fs.String("subscriptions", "", "subscriptions, a YAML or JSON list of {customer, plan, start, end} (overrides --config's)")
	input := fs.String("input", "", "usage events, one JSON per line; - for stdin (required)")
	config := fs.String("config", "", "tally configuration (meters, customers, time rules); Kafka and ClickHouse keys are ignored")
	summary := fs.Bool("summary", false, "print a per-customer, per-meter billing-period summary instead of rows")
	untilText := fs.String("until", "", "RFC 3339 time: at the end of the input the watermark is taken as this, so windows and billing periods ending at or before it close and emit final rows, true-ups and fee rows (default: the input's own watermark; the last windows stay provisional)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var until time.Time
	if *untilText != "" {
		var err error
		if until, err = time.Parse(time.RFC3339, *untilText); err != nil {
			return fmt.Errorf("rate: --until %q is not an RFC 3339 time such as 2026-04-01T00:00:00Z", *untilText)
		}
	}
	if *plans == "" || *input == "" {
		return errors.New("rate: --plans and --input are required, e.g. tally rate --plans plan.yaml --input usage.jsonl")
	}
	cfgArgs := []string{"--plan", *plans}
	if *config != "" {
		cfgArgs = append([]string{"--config", *config}, cfgArgs...)
	}
	cfg, err := loadConfig("rate", cfgArgs, false)
	if err != nil {
		return err
	}
	if *subscriptions != "" {
		data, err := os.ReadFile(*subscriptions)
		if err != nil {
			return fmt.Errorf("rate: --subscriptions: %w", err)
		}
		cfg.Subscriptions = nil
		if err := yaml.Unmarshal(data, &cfg.Subscriptions); err != nil {
			return fmt.Errorf("rate: --subscriptions %s: %w (want a list of {customer, plan, start, end})", *subscriptions, err)
		}
	}
	res, err := rateFile(ctx, cfg, *input, rateOptions{summary: *summary, until: until}, log)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	if *summary {
		for _, u := range res.summaries {
			for _, p := range u.Periods {
				if err := enc.Encode(map[string]any{"customer": u.Customer, "meter": p.Meter, "period_start": p.PeriodStart,
					"period_end": p.PeriodEnd, "quantity": p.Quantity, "count": p.Count, "amount": p.Amount, "fees": p.Fees, "currency": p.Currency}); err != nil {
					return err
				}
			}
		}
	} else {
		for i := range res.rows {
			if err := enc.Encode(&res.rows[i]); err != nil {
				return err
			}
		}
	}
	for _, l := range res.letters {
		fmt.Fprintf(stderr, "line %d: %s: %s\n", l.Offset+1, l.Reason, l.Detail)
	}
	if len(res.letters) > 0 {
		fmt.Fprintf(stderr, "tally rate: %d of %d lines not rated (listed above)\n", len(res.letters), res.lines)
	}
	return nil
}

// rated is what rating a file produced: the highest revision of every row
// (sorted by customer, meter, window, group), the dead letters by line, and
// with a summary each customer's live usage.
type rated struct {
	rows      []engine.RatedRow
	letters   []engine.DeadLetter
	lines     int
	summaries []engine.Usage
}

// rateOptions are rateFile's choices: a summary of each customer's periods,
// and the watermark to take at the end of the input (zero: the input's own).
type rateOptions struct {
	summary bool
	until   time.Time
}

// rateFile runs the engine over a JSON-lines file, in a temporary state
// folder, to the end of the file.
func rateFile(ctx context.Context, cfg Config, input string, opts rateOptions, log *slog.Logger) (*rated, error) {
	prices, meters, err := loadPlans(cfg)
	if err != nil {
		return nil, err
	}
	src, err := file.Open(input)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "tally-rate-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	store, err := state.Open(dir)
	if err != nil {
		return nil, err
	}
	defer store.Close()

	out := &collector{rows: make(map[string]engine.RatedRow), letters: make(map[string]engine.DeadLetter)}
	ecfg := cfg.engineConfig()
	ecfg.CheckpointInterval = 50 * time.Millisecond
	e, err := engine.New(ecfg, store, src, engine.NewDecoder(meters, cfg.decoderOptions()...), prices,
		[]engine.Sink{out}, []engine.DeadLetterSink{deadCollector{out}}, engine.NewMetrics(prometheus.NewRegistry()), log)
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(runCtx) }()

	// Wait until every line is read, then stop gracefully: the final
	// checkpoint emits the windows still open.
	for e.Stats().Consumed < uint64(src.Len()) {
		select {
		case err := <-done:
			return nil, fmt.Errorf("rate: engine stopped early: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if !opts.until.IsZero() {
		// Everything ending at or before until closes, whatever grace is.
		if _, err := e.AdvanceWatermark(runCtx, opts.until.Add(cfg.Grace)); err != nil {
			return nil, fmt.Errorf("rate: --until: %w", err)
		}
	}
	var customers []string
	if opts.summary {
		// A checkpoint cut after the last record was dispatched has passed
		// through every shard after that record: two more durable ones
		// guarantee the shards' periods hold everything.
		target := e.Stats().CheckpointSeq + 2
		for e.Stats().CheckpointSeq < target {
			select {
			case err := <-done:
				return nil, fmt.Errorf("rate: engine stopped early: %w", err)
			case <-time.After(5 * time.Millisecond):
			}
		}
		customers = uniqueSorted(src.Customers())
	}
	var summaries []engine.Usage
	for _, c := range customers {
		u, err := e.Usage(ctx, engine.UsageRequest{Customer: c})
		if err != nil {
			return nil, fmt.Errorf("rate: summary of %s: %w", c, err)
		}
		summaries = append(summaries, u)
	}
	e.Shutdown()
	if err := <-done; err != nil {
		return nil, fmt.Errorf("rate: %w", err)
	}
	res := &rated{summaries: summaries, lines: src.Len()}
	for _, r := range out.rows {
		res.rows = append(res.rows, r)
	}
	sort.Slice(res.rows, func(i, j int) bool {
		a, b := res.rows[i], res.rows[j]
		if a.Customer != b.Customer {
			return a.Customer < b.Customer
		}
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		if !a.WindowStart.Equal(b.WindowStart) {
			return a.WindowStart.Before(b.WindowStart)
		}
		return a.GroupKey < b.GroupKey
	})
	if opts.summary {
		res.summaries = summarize(e, meters, res.rows, summaries)
	}
	for _, l := range out.letters {
		res.letters = append(res.letters, l)
	}
	sort.Slice(res.letters, func(i, j int) bool { return res.letters[i].Offset < res.letters[j].Offset })
	return res, nil
}

// summarize is the summary of each customer's billing periods as a view
// over the rows (the highest revision of each, taken after the final
// checkpoint emitted the last windows, fee rows included): a period's
// amount is what a billing consumer of the rows sums, and every period with
// a row is listed, also those that left the engine's memory. Quantities of
// SUM and COUNT meters add up over windows; for the other aggregations the
// period aggregate comes from the engine's live periods (or the fee row).
func summarize(e *engine.Engine, meters *engine.Meters, rows []engine.RatedRow, live []engine.Usage) []engine.Usage {
	type periodKey struct {
		customer, meter string
		start           time.Time
	}
	byKey := make(map[periodKey]*engine.PeriodUsage)
	var order []periodKey
	get := func(k periodKey, end time.Time) *engine.PeriodUsage {
		p := byKey[k]
		if p == nil {
			p = &engine.PeriodUsage{Meter: k.meter, PeriodStart: k.start, PeriodEnd: end, Quantity: decimal.Zero, Amount: decimal.Zero, Fees: decimal.Zero}
			byKey[k] = p
			order = append(order, k)
		}
		return p
	}
	for _, r := range rows {
		start, end := e.BillingPeriod(r.Customer, r.WindowStart)
		k := periodKey{r.Customer, r.Meter, start}
		p := get(k, end)
		p.Amount = p.Amount.Add(r.Amount)
		p.Currency = r.Currency
		if r.GroupKey == engine.PeriodFeeGroup {
			p.Fees = p.Fees.Add(r.Amount)
			if !meters.Additive(r.Meter) {
				p.Quantity, p.Count = r.Quantity, r.Count
			}
			continue
		}
		if meters.Additive(r.Meter) {
			p.Quantity = p.Quantity.Add(r.Quantity)
			p.Count += r.Count
		}
	}
	for _, u := range live {
		for _, lp := range u.Periods {
			k := periodKey{u.Customer, lp.Meter, lp.PeriodStart}
			if p := byKey[k]; p != nil && !meters.Additive(lp.Meter) {
				p.Quantity, p.Count = lp.Quantity, lp.Count
			}
		}
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := order[i], order[j]
		if a.customer != b.customer {
			return a.customer < b.customer
		}
		if a.meter != b.meter {
			return a.meter < b.meter
		}
		return a.start.Before(b.start)
	})
	var out []engine.Usage
	for _, k := range order {
		if len(out) == 0 || out[len(out)-1].Customer != k.customer {
			out = append(out, engine.Usage{Customer: k.customer})
		}
		out[len(out)-1].Periods = append(out[len(out)-1].Periods, *byKey[k])
	}
	return out
}

// uniqueSorted returns the distinct values, sorted.
func uniqueSorted(values []string) []string {
	seen := make(map[string]bool, len(values))
	var out []string
	for _, v := range values {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}
