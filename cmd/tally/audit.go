package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"

	"github.com/tally-billing/tally/connectors/clickhouse"
	"github.com/tally-billing/tally/connectors/file"
	"github.com/tally-billing/tally/connectors/kafka"
	"github.com/tally-billing/tally/engine"
)

// errMismatch makes `tally audit` exit 1 after printing its report.
var errMismatch = errors.New("audit: discrepancies found (listed above)")

// runAudit is `tally audit`: it re-reads the source (the configured Kafka
// topics up to their current end, or a file export), recomputes every
// aggregate and charge in a fresh state folder, independent of the live
// one, and compares the windows starting in [from, to) with ClickHouse.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "the live engine's configuration: plans, meters, Kafka topics, ClickHouse (required)")
	fromFlag := fs.String("from", "", "first window start to compare, RFC 3339 (required)")
	toFlag := fs.String("to", "", "end of the windows to compare, exclusive, RFC 3339 (required)")
	input := fs.String("input", "", "a JSON-lines export of the source to re-read instead of the Kafka topics")
	timeout := fs.Duration("timeout", 30*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	from, err1 := time.Parse(time.RFC3339, *fromFlag)
	to, err2 := time.Parse(time.RFC3339, *toFlag)
	if *config == "" || err1 != nil || err2 != nil || !to.After(from) {
		return errors.New("audit: --config, --from and --to (RFC 3339, to after from) are required, e.g. tally audit --config tally.yaml --from 2026-03-01T00:00:00Z --to 2026-04-01T00:00:00Z")
	}
	cfg, err := loadConfig("audit", []string{"--config", *config}, *input == "")
	if err != nil {
		return err
	}
	if cfg.ClickHouse.Addr == "" {
		return errors.New("audit: config key clickhouse.addr (flag --clickhouse-addr) is empty: there is nothing to compare with")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	path := *input
	if path == "" {
		dir, err := os.MkdirTemp("", "tally-audit-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "source.jsonl")
		n, err := exportSource(ctx, cfg, path, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "audit: re-read %d records from %v\n", n, cfg.Kafka.Topics)
	}
	recomputed, err := rateFile(ctx, cfg, path, rateOptions{}, log)
	if err != nil {
		return err
	}
	ch, err := clickhouse.Open(ctx, clickhouse.Config{Addr: cfg.ClickHouse.Addr, Database: cfg.ClickHouse.Database,
		Table: cfg.ClickHouse.Table, Username: cfg.ClickHouse.Username, Password: cfg.ClickHouse.Password})
	if err != nil {
		return err
	}
	defer ch.Close()
	live, err := ch.Rated(ctx, cfg.Tenant, from, to)
	if err != nil {
		return err
	}
	var want []engine.RatedRow
	for _, r := range recomputed.rows {
		if !r.WindowStart.Before(from) && r.WindowStart.Before(to) {
			want = append(want, r)
		}
	}
	report := compareRated(want, live)
	for _, line := range report.lines {
		fmt.Fprintln(stdout, line)
	}
	fmt.Fprintf(stdout, "audit: %s..%s: %d customer/meter pairs, %d windows recomputed, %d in ClickHouse, %d discrepancies; %d source records not rated\n",
		from.Format(time.RFC3339), to.Format(time.RFC3339), report.pairs, len(want), len(live), report.mismatches, len(recomputed.letters))
	if report.mismatches > 0 {
		return errMismatch
	}
	return nil
}

// exportSource writes the configured topics, up to their current ends, to
// path as JSON lines. Partitions are interleaved in proportion to their
// progress, as the live engine reads them side by side, so that
// out-of-orderness, and so lateness, stays close to the live run's.
func exportSource(ctx context.Context, cfg Config, path string, log *slog.Logger) (int, error) {
	src, err := kafka.NewSource(cfg.kafkaSource(), log)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	type rec struct {
		pos   float64
		value []byte
		stamp time.Time
	}
	// Records the live engine dead-lettered as wrong_partition are left
	// out, as it left them out.
	_, meters, err := loadPlans(cfg)
	if err != nil {
		return 0, err
	}
	decoder := engine.NewDecoder(meters, cfg.decoderOptions()...)
	parts, err := src.Partitions(ctx)
	if err != nil {
		return 0, err
	}
	counts := engine.PartitionCounts(parts)
	partitioner := engine.Partitioner(cfg.Kafka.Partitioner)
	var events []engine.Event
	misplaced := 0
	byPartition := make(map[engine.PartitionID][]engine.Record)
	err = src.ReadToEnd(ctx, func(p engine.PartitionID, r engine.Record) error {
		var derr error
		if events, derr = decoder.DecodeAt(r.Value, events[:0], r.Timestamp); derr == nil && len(events) > 0 && events[0].Customer != "" { // a shared service's SLA event is on every partition
			if partitioner.Misplaced(p, events[0].Customer, int(counts[p.Topic])) != "" {
				misplaced++
				return nil
			}
		}
		// A line end kept by a producer (CSV lines often have one) is not
		// part of the record: the decoder ignores it too.
		r.Value = bytes.TrimRight(r.Value, "\r\n")
		if bytes.IndexByte(r.Value, '\n') >= 0 {
			return fmt.Errorf("audit: %s offset %d holds a newline: it cannot go through the JSON-lines export", p, r.Offset)
		}
		byPartition[p] = append(byPartition[p], r)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if misplaced > 0 {
		log.Warn("audit: left out records on another partition than their customer's, as the live engine dead-letters them (wrong_partition)", "records", misplaced)
	}
	var all []rec
	for _, records := range byPartition {
		for i, r := range records {
			all = append(all, rec{pos: float64(i) / float64(len(records)), value: r.Value, stamp: r.Timestamp})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].pos < all[j].pos })
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	w := bufio.NewWriter(f)
	var stamps strings.Builder
	for _, r := range all {
		w.Write(r.value)
		w.WriteByte('\n')
		stamps.WriteString(r.stamp.UTC().Format(time.RFC3339Nano) + "\n")
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	// The records' Kafka timestamps, for maxFutureSkew (file.TimesSuffix).
	return len(all), os.WriteFile(path+file.TimesSuffix, []byte(stamps.String()), 0o644)
}

// auditReport is the comparison of recomputed and live rows.
type auditReport struct {
	lines      []string
	pairs      int
	mismatches int
}

// compareRated compares per customer and meter: every window's quantity and
// count exactly, and the money of each billing period (window amounts are
// period-to-date increments, so their split between windows depends on the
// order they were charged in; their sum does not).
func compareRated(want, got []engine.RatedRow) auditReport {
	type pair struct{ customer, meter string }
	type side struct {
		windows map[string]engine.RatedRow
		money   decimal.Decimal
	}
	collect := func(rows []engine.RatedRow) map[pair]*side {
		out := make(map[pair]*side)
		for _, r := range rows {
			k := pair{r.Customer, r.Meter}
			s := out[k]
			if s == nil {
				s = &side{windows: make(map[string]engine.RatedRow)}
				out[k] = s
			}
			s.windows[r.GroupKey+"|"+r.WindowStart.Format(time.RFC3339)] = r
			s.money = s.money.Add(r.Amount)
		}
		return out
	}
	w, g := collect(want), collect(got)
	keys := make(map[pair]bool)
	for k := range w {
		keys[k] = true
	}
	for k := range g {
		keys[k] = true
	}
	sorted := make([]pair, 0, len(keys))
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].customer != sorted[j].customer {
			return sorted[i].customer < sorted[j].customer
		}
		return sorted[i].meter < sorted[j].meter
	})
	var rep auditReport
	empty := &side{windows: map[string]engine.RatedRow{}}
	for _, k := range sorted {
		rep.pairs++
		ws, gs := w[k], g[k]
		if ws == nil {
			ws = empty
		}
		if gs == nil {
			gs = empty
		}
		var problems []string
		for id, r := range ws.windows {
			l, ok := gs.windows[id]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("window %s missing in ClickHouse (quantity %s)", id, r.Quantity))
			case !l.Quantity.Equal(r.Quantity) || l.Count != r.Count:
				problems = append(problems, fmt.Sprintf("window %s: ClickHouse %s/%d, recomputed %s/%d", id, l.Quantity, l.Count, r.Quantity, r.Count))
			}
		}
		for id, l := range gs.windows {
			if _, ok := ws.windows[id]; !ok {
				problems = append(problems, fmt.Sprintf("window %s in ClickHouse only (quantity %s)", id, l.Quantity))
			}
		}
		if !ws.money.Equal(gs.money) {
			problems = append(problems, fmt.Sprintf("amount: ClickHouse %s, recomputed %s", gs.money, ws.money))
		}
		sort.Strings(problems)
		if len(problems) == 0 {
			rep.lines = append(rep.lines, fmt.Sprintf("ok        %s %s: %d windows, amount %s", k.customer, k.meter, len(ws.windows), ws.money))
			continue
		}
		rep.mismatches += len(problems)
		for _, p := range problems {
			rep.lines = append(rep.lines, fmt.Sprintf("MISMATCH  %s %s: %s", k.customer, k.meter, p))
		}
	}
	return rep
}
