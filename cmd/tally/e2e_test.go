package main

// End-to-end tests: a known stream is produced with kcat (a real third-party
// Kafka client) into an in-process kfake cluster, the wired engine runs
// against it and a real ClickHouse, and the results are read back with kcat
// and clickhouse-client and compared with totals the test computes itself,
// without engine code.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tally-billing/tally/bench/gen"
	"github.com/tally-billing/tally/engine"
)

// inCI reports whether missing components must fail tests instead of skipping.
func inCI() bool { return os.Getenv("CI") == "true" }

func requireTool(t *testing.T, name string) string {
	t.Helper()
	return requireToolOf(t, name, name)
}

// requireToolOf is requireTool for a tool of the Debian package pkg.
func requireToolOf(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if inCI() {
			t.Fatalf("%s is not installed; make test installs it (apt-get install %s)", name, pkg)
		}
		t.Skipf("%s not installed; run make test", name)
	}
	return path
}

// clickHouseAddr returns the native address of the test ClickHouse that
// make test started (TALLY_TEST_CLICKHOUSE).
func clickHouseAddr(t *testing.T) string {
	t.Helper()
	addr := os.Getenv("TALLY_TEST_CLICKHOUSE")
	if addr == "" {
		if inCI() {
			t.Fatal("TALLY_TEST_CLICKHOUSE is not set: ClickHouse did not start (make test starts it with .ci/clickhouse.sh)")
		}
		t.Skip("TALLY_TEST_CLICKHOUSE not set; run make test")
	}
	requireTool(t, "clickhouse-client")
	return addr
}

func startKafka(t *testing.T, partitions int32) []string {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(partitions, "usage"),
		kfake.SeedTopics(partitions, "rated-usage"),
		kfake.SeedTopics(1, "usage-dead-letters"))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

// produce writes key<TAB>value lines with kcat.
func produce(t *testing.T, brokers []string, topic string, msgs [][2]string) {
	t.Helper()
	var in bytes.Buffer
	for _, m := range msgs {
		if strings.ContainsAny(m[0]+m[1], "\t\n") {
			t.Fatalf("message %q cannot be sent as a kcat line", m)
		}
		fmt.Fprintf(&in, "%s\t%s\n", m[0], m[1])
	}
	cmd := exec.Command(requireTool(t, "kcat"), "-P", "-b", strings.Join(brokers, ","), "-t", topic, "-K", "\t", "-X", "acks=all",
		"-X", "partitioner=murmur2_random") // Kafka's Java default, Tally's default kafka.partitioner
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce: %v\n%s", err, out)
	}
}

type consumed struct {
	key, headers, value string
}

// consume reads a whole topic with kcat.
func consume(t *testing.T, brokers []string, topic string) []consumed {
	t.Helper()
	cmd := exec.Command(requireTool(t, "kcat"), "-C", "-b", strings.Join(brokers, ","), "-t", topic,
		"-o", "beginning", "-e", "-q", "-f", "%k\t%h\t%s\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat consume %s: %v", topic, err)
	}
	var msgs []consumed
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		parts := strings.SplitN(line, "\t", 3)
		if len(parts) != 3 {
			t.Fatalf("kcat line %q: want key, headers, value", line)
		}
		msgs = append(msgs, consumed{key: parts[0], headers: parts[1], value: parts[2]})
	}
	return msgs
}

// total is the expected or observed aggregate of one row identity.
type total struct {
	quantity decimal.Decimal
	count    int64
	amount   decimal.Decimal
}

func (a total) String() string { return fmt.Sprintf("%s/%d/%s", a.quantity, a.count, a.amount) }

// prices are the demo plan's unit prices, restated here so that the test
// computes money independently (half-even to 6 places, as the plan says).
var prices = map[string]decimal.Decimal{
	"voice_seconds": decimal.RequireFromString("0.0004"),
	"sms":           decimal.RequireFromString("0.05"),
	"data_bytes":    decimal.RequireFromString("0.000000002"),
}

// stream is a generated input with its independently computed result.
type stream struct {
	msgs      [][2]string
	expected  map[string]total // by "meter|customer|group|unix start"
	malformed map[string]bool  // malformed record values
	dups      int
	late      int // records 10 minutes behind the stream: they revise closed windows
}

// makeStream generates n usage records over a few minutes of event time,
// slightly out of order, with duplicates, late records (10 minutes behind,
// within the default 1 h revise horizon, so they revise closed windows) and
// malformed records mixed in.
func makeStream(seed uint64, n int, base time.Time) *stream {
	g := gen.New(seed, 300)
	rng := rand.New(rand.NewPCG(seed, 7))
	s := &stream{expected: make(map[string]total), malformed: make(map[string]bool)}
	seen := make(map[string]bool)
	for i := range n {
		if rng.IntN(200) == 0 {
			bad := string(g.Malformed())
			s.malformed[bad] = true
			s.msgs = append(s.msgs, [2]string{"bad", bad})
			continue
		}
		at := base.Add(time.Duration(i)*12*time.Millisecond + time.Duration(rng.IntN(2000))*time.Millisecond)
		if i > n/2 && rng.IntN(100) == 0 {
			at = at.Add(-10 * time.Minute)
			s.late++
		}
		u := g.Next(at)
		value := string(u.PlainJSON())
		source := ""
		if rng.IntN(2) == 0 {
			value, source = string(u.CloudEventJSON()), "tally-gen"
		}
		s.msgs = append(s.msgs, [2]string{u.Customer, value})
		if rng.IntN(50) == 0 {
			s.msgs = append(s.msgs, [2]string{u.Customer, value}) // producer retry
			s.dups++
		}
		id := source + "\x00" + u.ID
		if seen[id] {
			continue
		}
		seen[id] = true
		var group string
		for k, v := range u.Dims { // one dim per generated event
			group = k + "=" + v
		}
		key := fmt.Sprintf("%s|%s|%s|%d", u.Meter, u.Customer, group, u.Time.Truncate(time.Minute).Unix())
		t := s.expected[key]
		if t.quantity.IsZero() && t.count == 0 {
			t.quantity = decimal.Zero
		}
		t.quantity = t.quantity.Add(u.Value)
		t.count++
		s.expected[key] = t
	}
	for key, t := range s.expected {
		meter := key[:strings.IndexByte(key, '|')]
		t.amount = t.quantity.Mul(prices[meter]).RoundBank(6)
		s.expected[key] = t
	}
	return s
}

// clickHouseTotals reads the highest revision of every row with FINAL.
func clickHouseTotals(t *testing.T, addr, database string) (map[string]total, error) {
	lines, err := clickHouseTSV(addr, "SELECT meter, customer, group_key, toUInt32(window_start), toString(quantity), event_count, toString(amount) FROM "+
		database+".rated_usage FINAL FORMAT TSV", 7)
	if err != nil {
		return nil, err
	}
	totals := make(map[string]total)
	for _, f := range lines {
		count, _ := strconv.ParseInt(f[5], 10, 64)
		key := strings.Join(f[:4], "|")
		if _, dup := totals[key]; dup {
			return nil, fmt.Errorf("FINAL returned identity %s twice", key)
		}
		totals[key] = total{quantity: decimal.RequireFromString(f[4]), count: count, amount: decimal.RequireFromString(f[6])}
	}
	return totals, nil
}

// clickHouseTSV runs query with clickhouse-client and returns its rows,
// each of fields columns.
func clickHouseTSV(addr, query string, fields int) ([][]string, error) {
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query", query).Output()
	if err != nil {
		return nil, fmt.Errorf("clickhouse-client: %w", err)
	}
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != fields {
			return nil, fmt.Errorf("clickhouse line %q: want %d fields", line, fields)
		}
		rows = append(rows, f)
	}
	return rows, nil
}

// diff describes how got differs from want, "" when equal to the last
// decimal: quantity and count per window, and, where got carries amounts,
// money per billing period. A window's amount is its share of the period's
// charge, rounded once on the period-to-date total (so it depends on the
// order windows were charged in); the period's charge does not: it must be
// round(period quantity × unit price), exactly.
func diff(want, got map[string]total) string {
	var problems []string
	for key, w := range want {
		g, ok := got[key]
		switch {
		case !ok:
			problems = append(problems, "missing "+key)
		case !g.quantity.Equal(w.quantity) || g.count != w.count:
			problems = append(problems, fmt.Sprintf("%s: got %s want %s", key, g, w))
		}
	}
	for key := range got {
		if _, ok := want[key]; !ok {
			problems = append(problems, "unexpected "+key)
		}
	}
	// Money is compared whenever the expectation charges: a sink that lost
	// its amounts fails here instead of switching the check off.
	if carriesAmounts(want) {
		wantMoney, gotMoney := periodAmounts(want, true), periodAmounts(got, false)
		for period, w := range wantMoney {
			if g := gotMoney[period]; !g.Equal(w) {
				problems = append(problems, fmt.Sprintf("period %s: window amounts add up to %s, want %s", period, g, w))
			}
		}
	}
	sort.Strings(problems)
	if len(problems) > 5 {
		problems = append(problems[:5], fmt.Sprintf("... %d more", len(problems)-5))
	}
	return strings.Join(problems, "; ")
}

func carriesAmounts(m map[string]total) bool {
	for _, t := range m {
		if !t.amount.IsZero() {
			return true
		}
	}
	return false
}

// periodAmounts sums money by meter, customer and billing period (the
// calendar month of the window start: the test config has no anchor day).
// With expected, it prices each period's quantity independently: quantity
// × unit price, half-even to 6 places, as the demo plan says.
func periodAmounts(m map[string]total, expected bool) map[string]decimal.Decimal {
	quantities := make(map[string]decimal.Decimal)
	amounts := make(map[string]decimal.Decimal)
	for key, t := range m {
		parts := strings.Split(key, "|")
		unix, _ := strconv.ParseInt(parts[3], 10, 64)
		period := parts[0] + "|" + parts[1] + "|" + time.Unix(unix, 0).UTC().Format("2006-01")
		quantities[period] = quantities[period].Add(t.quantity)
		amounts[period] = amounts[period].Add(t.amount)
	}
	if expected {
		for period, q := range quantities {
			amounts[period] = q.Mul(prices[period[:strings.IndexByte(period, '|')]]).RoundBank(6)
		}
	}
	return amounts
}

// ratedTopicTotals keeps the highest revision per key of the rated topic.
func ratedTopicTotals(t *testing.T, brokers []string) map[string]total {
	t.Helper()
	totals := make(map[string]total)
	for _, r := range ratedTopicBest(t, brokers) {
		key := fmt.Sprintf("%s|%s|%s|%d", r.Meter, r.Customer, r.GroupKey, r.WindowStart.Unix())
		totals[key] = total{quantity: r.Quantity, count: int64(r.Count), amount: r.Amount}
	}
	return totals
}

// ratedTopicBest reads the rated topic and keeps the highest revision per
// key, checking that every message is keyed by its row's identity, carries
// its revision in a header, and that no revision came twice with different
// totals.
func ratedTopicBest(t *testing.T, brokers []string) map[string]engine.RatedRow {
	t.Helper()
	best := make(map[string]engine.RatedRow)
	for _, m := range consume(t, brokers, "rated-usage") {
		var row engine.RatedRow
		if err := json.Unmarshal([]byte(m.value), &row); err != nil {
			t.Fatalf("rated message %q: %v", m.value, err)
		}
		if m.key != row.Identity() {
			t.Fatalf("rated message key %q is not the row identity %q", m.key, row.Identity())
		}
		if !strings.Contains(m.headers, "tally-revision="+strconv.FormatUint(row.Revision, 10)) {
			t.Fatalf("rated message headers %q lack revision %d", m.headers, row.Revision)
		}
		if prev, ok := best[m.key]; !ok || row.Revision >= prev.Revision {
			if ok && row.Revision == prev.Revision && (!row.Quantity.Equal(prev.Quantity) || !row.Amount.Equal(prev.Amount)) {
				t.Fatalf("revision %d of %s delivered twice with different totals", row.Revision, m.key)
			}
			best[m.key] = row
		}
	}
	return best
}

// checkDeadLetters asserts that every malformed record is in the dead-letter
// topic once (by source position) with a reason, and nothing else is.
func checkDeadLetters(t *testing.T, brokers []string, s *stream) {
	t.Helper()
	positions := make(map[string]string)
	for _, m := range consume(t, brokers, "usage-dead-letters") {
		if !s.malformed[m.value] {
			t.Errorf("dead letter %q was not a malformed record", m.value)
		}
		if !strings.Contains(m.headers, "tally-reason=") {
			t.Errorf("dead letter %s has no reason header: %q", m.key, m.headers)
		}
		positions[m.key] = m.value
	}
	want := 0
	for _, m := range s.msgs {
		if s.malformed[m[1]] {
			want++
		}
	}
	if len(positions) != want {
		t.Errorf("dead-letter topic holds %d distinct source records, want %d malformed", len(positions), want)
	}
}

// checkClickHouseDeadLetters asserts that the dead_letters table holds every
// malformed record once, with a reason, and nothing else.
func checkClickHouseDeadLetters(t *testing.T, addr, database string, s *stream) {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query",
		"SELECT reason, raw FROM "+database+".dead_letters FINAL FORMAT TSVRaw").Output()
	if err != nil {
		t.Fatalf("clickhouse-client: %v", err)
	}
	want := 0
	for _, m := range s.msgs {
		if s.malformed[m[1]] {
			want++
		}
	}
	// Not TrimSpace: a malformed record may end in a space.
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != want {
		t.Errorf("dead_letters FINAL holds %d rows, want %d malformed records", len(lines), want)
	}
	for _, line := range lines {
		reason, raw, _ := strings.Cut(line, "\t")
		if reason == "" || !s.malformed[raw] {
			t.Errorf("dead_letters row %q: want a reason and a malformed record", line)
			break
		}
	}
}

// testConfig is a small, fast configuration against brokers and ClickHouse.
func testConfig(t *testing.T, brokers []string, chAddr, database string) Config {
	cfg := defaultConfig()
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.Plan = "demo_plan.yaml"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Kafka.Brokers = brokers
	cfg.ClickHouse.Addr = chAddr
	cfg.ClickHouse.Database = database
	cfg.CheckpointInterval = 100 * time.Millisecond
	cfg.EmitOpenEvery = 200 * time.Millisecond
	cfg.SinkBatchRows = 500
	cfg.Shards = 3
	// TALLY_TEST_SCALE_OUT=local runs these tests on partition-owned tasks.
	if mode := os.Getenv("TALLY_TEST_SCALE_OUT"); mode != "" {
		cfg.ScaleOut = mode
	}
	if err := cfg.validate(true); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func testDatabase(t *testing.T) string {
	return fmt.Sprintf("tally_test_%d_%d", time.Now().UnixNano()%1e9, rand.IntN(1000))
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// running is an app running in the background.
type running struct {
	app   *app
	stop  chan struct{}
	crash context.CancelFunc
	done  chan error
}

// start builds and runs an app. options, if given, may refer to r (its
// crash function is set before they are called).
func start(t *testing.T, cfg Config, options ...func(r *running) buildOption) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stop: make(chan struct{}), crash: cancel, done: make(chan error, 1)}
	var opts []buildOption
	for _, o := range options {
		opts = append(opts, o(r))
	}
	a, err := build(ctx, cfg, quietLog(), opts...)
	if err != nil {
		cancel()
		t.Fatalf("build: %v", err)
	}
	r.app = a
	go func() {
		err := a.run(ctx, r.stop)
		a.close()
		r.done <- err
	}()
	return r
}

// waitFor polls cond until it returns "" or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
}

func clickHouseMatches(t *testing.T, addr, database string, want map[string]total) func() string {
	return func() string {
		got, err := clickHouseTotals(t, addr, database)
		if err != nil {
			return err.Error()
		}
		return diff(want, got)
	}
}

func TestEndToEnd(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 4)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(1, 20000, base)
	produce(t, brokers, "usage", s.msgs)

	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	r := start(t, cfg)
	waitFor(t, 90*time.Second, "ClickHouse to hold the expected totals", clickHouseMatches(t, chAddr, database, s.expected))
	stopGracefully(t, r)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
	checkDeadLetters(t, brokers, s)
	checkClickHouseDeadLetters(t, chAddr, database, s)
	st := r.app.engine.Stats()
	if st.Duplicates != uint64(s.dups) {
		t.Errorf("engine counted %d duplicates, the stream has %d", st.Duplicates, s.dups)
	}
	if st.Consumed != uint64(len(s.msgs)) {
		t.Errorf("engine consumed %d records, %d were produced", st.Consumed, len(s.msgs))
	}
	t.Logf("%d records, %d duplicates, %d rows, %d dead letters", len(s.msgs), s.dups, len(s.expected), st.DeadLetters)

	// tally audit re-reads the topic, recomputes and finds ClickHouse
	// exact; then a tampered row is reported and fails the audit.
	config := filepath.Join(t.TempDir(), "tally.yaml")
	plan, _ := filepath.Abs(cfg.Plan)
	err := os.WriteFile(config, []byte(fmt.Sprintf("plan: %s\nkafka:\n  brokers: [%s]\nclickhouse:\n  addr: %s\n  database: %s\n",
		plan, strings.Join(brokers, ", "), chAddr, database)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	audit := func() (string, error) {
		var out, errOut bytes.Buffer
		err := runAudit(context.Background(), []string{"--config", config, "--from", base.Add(-time.Hour).Format(time.RFC3339),
			"--to", base.Add(time.Hour).Format(time.RFC3339)}, &out, &errOut, quietLog())
		return out.String() + errOut.String(), err
	}
	report, err := audit()
	if err != nil || !strings.Contains(report, " 0 discrepancies") || strings.Contains(report, "MISMATCH") {
		t.Fatalf("audit of an exact run: %v\n%s", err, report)
	}
	host, port, _ := strings.Cut(chAddr, ":")
	tamper := "INSERT INTO " + database + ".rated_usage (tenant, meter, customer, group_key, window_start, window_end, quantity, event_count, amount, currency, unit_price, revision, final, breakdown) " +
		"SELECT tenant, meter, customer, group_key, window_start, window_end, quantity + 1, event_count, amount, currency, unit_price, revision + 1000, final, breakdown FROM " +
		database + ".rated_usage FINAL ORDER BY customer, meter LIMIT 1"
	if out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query", tamper).CombinedOutput(); err != nil {
		t.Fatalf("tamper: %v\n%s", err, out)
	}
	report, err = audit()
	if !errors.Is(err, errMismatch) || !strings.Contains(report, "MISMATCH") || !strings.Contains(report, " 1 discrepancies") {
		t.Errorf("audit after tampering with one row: %v\n%s", err, report)
	}

	// Money alone: another row keeps its quantity and gains a cent.
	tamper = "INSERT INTO " + database + ".rated_usage (tenant, meter, customer, group_key, window_start, window_end, quantity, event_count, amount, currency, unit_price, revision, final, breakdown) " +
		"SELECT tenant, meter, customer, group_key, window_start, window_end, quantity, event_count, amount + toDecimal64(0.01, 2), currency, unit_price, revision + 1000, final, breakdown FROM " +
		database + ".rated_usage FINAL ORDER BY customer DESC, meter DESC LIMIT 1"
	if out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query", tamper).CombinedOutput(); err != nil {
		t.Fatalf("tamper: %v\n%s", err, out)
	}
	report, err = audit()
	if !errors.Is(err, errMismatch) || !strings.Contains(report, "amount: ClickHouse") || !strings.Contains(report, " 2 discrepancies") {
		t.Errorf("audit after adding a cent to one row: %v\n%s", err, report)
	}

	// The same audit from an export of the topic (--input) finds the same.
	export := filepath.Join(t.TempDir(), "export.jsonl")
	var lines strings.Builder
	for _, m := range consume(t, brokers, "usage") {
		lines.WriteString(m.value + "\n")
	}
	if err := os.WriteFile(export, []byte(lines.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = runAudit(context.Background(), []string{"--config", config, "--input", export, "--from", base.Add(-time.Hour).Format(time.RFC3339),
		"--to", base.Add(time.Hour).Format(time.RFC3339)}, &out, &errOut, quietLog())
	if report := out.String() + errOut.String(); !errors.Is(err, errMismatch) || !strings.Contains(report, " 2 discrepancies") {
		t.Errorf("audit --input of an export: %v\n%s", err, report)
	}
}

// crashingSink writes half of one batch, then crashes the engine: a crash
// while a sink is mid-batch.
type crashingSink struct {
	engine.Sink
	once  sync.Once
	crash func()
}

func (c *crashingSink) Write(ctx context.Context, rows []engine.RatedRow) error {
	crashed := false
	if len(rows) >= 2 {
		c.once.Do(func() {
			_ = c.Sink.Write(ctx, rows[:len(rows)/2])
			c.crash()
			crashed = true
		})
	}
	if crashed {
		return fmt.Errorf("crashed mid-batch")
	}
	return c.Sink.Write(ctx, rows)
}

func TestRestartsKeepTotalsExact(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 4)
	base := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)
	s := makeStream(2, 40000, base)
	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.CheckpointInterval = 250 * time.Millisecond

	// The stream arrives in chunks; after each chunk the engine runs and is
	// stopped at one of several points, then restarted on the same state.
	const rounds = 8
	chunk := (len(s.msgs) + rounds - 1) / rounds
	rng := rand.New(rand.NewPCG(3, 3))
	var consumedTotal uint64
	for round := range rounds {
		produce(t, brokers, "usage", s.msgs[round*chunk:min((round+1)*chunk, len(s.msgs))])
		var r *running
		var how string
		switch round % 4 {
		case 0: // right after a checkpoint became durable
			how = "after a checkpoint"
			r = start(t, cfg)
			waitReady(t, r)
			first := r.app.engine.Stats().CheckpointSeq
			deadline := time.Now().Add(30 * time.Second)
			for st := r.app.engine.Stats(); st.CheckpointSeq <= first+1 || st.Consumed == 0; st = r.app.engine.Stats() {
				if time.Now().After(deadline) {
					t.Fatalf("round %d: no checkpoint with data in 30s", round)
				}
				time.Sleep(2 * time.Millisecond)
			}
			r.crash()
		case 1, 2: // between checkpoints, at a random moment
			how = "between checkpoints"
			r = start(t, cfg)
			waitReady(t, r)
			waitFor(t, 30*time.Second, "consumption", func() string {
				if r.app.engine.Stats().Consumed > 0 {
					return ""
				}
				return "nothing consumed yet"
			})
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			r.crash()
		case 3: // while the ClickHouse sink is mid-batch
			how = "mid sink batch"
			r = start(t, cfg, func(r *running) buildOption {
				return func(o *buildOptions) {
					o.wrapSink = func(sink engine.Sink) engine.Sink {
						if strings.HasPrefix(sink.Name(), "clickhouse:") {
							return &crashingSink{Sink: sink, crash: r.crash}
						}
						return sink
					}
				}
			})
		}
		select {
		case err := <-r.done:
			if err == nil {
				t.Fatalf("round %d (%s): crashed run returned nil", round, how)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d (%s): engine did not stop", round, how)
		}
		st := r.app.engine.Stats()
		consumedTotal += st.Consumed
		t.Logf("round %d: stopped %s at checkpoint %d after consuming %d records", round, how, st.CheckpointSeq, st.Consumed)
	}
	r := start(t, cfg)
	waitFor(t, 120*time.Second, "ClickHouse to hold the expected totals after restarts",
		clickHouseMatches(t, chAddr, database, s.expected))
	stopGracefully(t, r)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs after restarts: %s", d)
	}
	checkDeadLetters(t, brokers, s)
	checkClickHouseDeadLetters(t, chAddr, database, s)
	consumedTotal += r.app.engine.Stats().Consumed
	t.Logf("%d records produced, %d consumed over %d runs (replays after crashes included)", len(s.msgs), consumedTotal, rounds+1)
}

func waitReady(t *testing.T, r *running) {
	t.Helper()
	waitFor(t, 30*time.Second, "the engine to be ready", func() string {
		if err := r.app.engine.Ready(); err != nil {
			return err.Error()
		}
		return ""
	})
}
