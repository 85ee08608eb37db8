package engine

// A deterministic harness around the real Engine: an in-memory source fed by
// the test, in-memory sinks, checkpoints cut on request once given records
// are dispatched, a fake wall clock, and crash/restart on the same Pebble
// folder. Datadriven files and the property test drive it.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// memSource is a Source whose partitions the test appends to.
type memSource struct {
	mu    sync.Mutex
	topic string
	parts [][][]byte
	grow  chan struct{} // closed and replaced on every append
}

func newMemSource(partitions int) *memSource {
	return &memSource{topic: "usage", parts: make([][][]byte, partitions), grow: make(chan struct{})}
}

func (m *memSource) append(partition int, records ...[]byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.parts[partition] = append(m.parts[partition], records...)
	close(m.grow)
	m.grow = make(chan struct{})
}

func (m *memSource) offsets() map[PartitionID]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[PartitionID]int64)
	for i, p := range m.parts {
		out[PartitionID{Topic: m.topic, Partition: int32(i)}] = int64(len(p))
	}
	return out
}

func (m *memSource) Partitions(context.Context) ([]PartitionID, error) {
	ids := make([]PartitionID, len(m.parts))
	for i := range ids {
		ids[i] = PartitionID{Topic: m.topic, Partition: int32(i)}
	}
	return ids, nil
}

func (m *memSource) Open(_ context.Context, p PartitionID, offset int64) (PartitionReader, error) {
	if offset == OffsetEarliest {
		offset = 0
	}
	return &memReader{src: m, partition: int(p.Partition), next: offset}, nil
}

type memReader struct {
	src       *memSource
	partition int
	next      int64
}

func (r *memReader) Fetch(ctx context.Context) ([]Record, error) {
	for {
		r.src.mu.Lock()
		part := r.src.parts[r.partition]
		grow := r.src.grow
		r.src.mu.Unlock()
		if int64(len(part)) > r.next {
			var out []Record
			for ; r.next < int64(len(part)) && len(out) < 7; r.next++ { // small fetches: many batches
				out = append(out, Record{Offset: r.next, Value: part[r.next], HighWater: int64(len(part))})
			}
			return out, nil
		}
		select {
		case <-grow:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (r *memReader) Close() error { return nil }

// captureSink records every delivered row and dead letter.
type captureSink struct {
	mu      sync.Mutex
	rows    []RatedRow
	letters []DeadLetter
}

func (c *captureSink) Name() string { return "capture" }

func (c *captureSink) Write(_ context.Context, rows []RatedRow) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rows = append(c.rows, rows...)
	return nil
}

type captureDead struct{ *captureSink }

func (c captureDead) Name() string { return "capture-dead" }

func (c captureDead) WriteDeadLetters(_ context.Context, letters []DeadLetter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.letters = append(c.letters, letters...)
	return nil
}

// halfRater charges 0.5 per unit of every meter.
type halfRater struct{}

func (halfRater) RateEvent(rating.Subscriber, string, time.Time, rating.Usage) (rating.EventRating, error) {
	return rating.EventRating{}, nil
}

func (halfRater) Currency(rating.Subscriber, string, time.Time) (string, bool) { return "EUR", true }

func (halfRater) IncrementEvents(rating.Subscriber, string, time.Time, rating.WindowUsage, decimal.Decimal, decimal.Decimal) (rating.Charge, error) {
	return rating.Charge{}, fmt.Errorf("halfRater prices no meter per event")
}

func (halfRater) PeriodFee(rating.Subscriber, string, time.Time, time.Time, decimal.Decimal) (rating.Charge, bool, error) {
	return rating.Charge{}, false, nil
}

func (halfRater) Increment(_ rating.Subscriber, _ string, _ time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	price := decimal.RequireFromString("0.5")
	return rating.Charge{Amount: after.Mul(price).Round(6).Sub(before.Mul(price).Round(6)), Currency: "EUR", UnitPrice: price}, nil
}

var harnessLog io.Writer = io.Discard

type harness struct {
	t      testing.TB
	dir    string
	cfg    Config
	meters *Meters
	src    *memSource
	sink   *captureSink
	// rater prices rows; halfRater unless a test sets a plan.
	rater Rater
	// earlyCheckpoints lets queued actions cut checkpoints of their own;
	// off by default, so that checkpoints come only on request and a
	// seed replays the same cuts.
	earlyCheckpoints bool
	// sinkOverride, if set, receives rows instead of sink (which still
	// receives dead letters).
	sinkOverride Sink
	// changelog, if set, takes every checkpoint before the store (a task
	// of a Node): start restores the store's tail from it, as a Node does.
	changelog *memChangelog

	clockMu sync.Mutex
	clock   time.Time

	engine *Engine
	cancel context.CancelFunc
	done   chan error

	// delivered rows by identity and revision, to tell re-deliveries from news.
	seen       map[string]RatedRow
	rowCursor  int
	deadCursor int
	deadSeen   map[string]bool
}

func newHarness(t testing.TB, partitions int) *harness {
	cfg := DefaultConfig()
	cfg.CheckpointInterval = time.Minute // cuts come from checkpoint requests
	cfg.Shards = 2
	// Half the tests (by name, so a replay does the same) write delta log
	// bases as soon as the deltas outgrow the last one, crossing bases,
	// deltas and tombstones in every mix; the other half write none, where
	// a change not marked dirty is lost at a crash rather than saved by a
	// base. TestDataDriven runs every file both ways.
	cfg.DeltaBaseMinBytes = 1 << 62
	name := fnv.New32a()
	name.Write([]byte(t.Name()))
	if name.Sum32()%2 == 0 {
		cfg.DeltaBaseMinBytes = 1
	}
	// Specs place records on partitions by hand; wrong_partition has its
	// own test.
	cfg.Partitioner = PartitionerNone
	return &harness{t: t, dir: t.TempDir(), cfg: cfg, src: newMemSource(partitions), sink: &captureSink{},
		clock: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), seen: make(map[string]RatedRow), deadSeen: make(map[string]bool)}
}

func (h *harness) now() time.Time {
	h.clockMu.Lock()
	defer h.clockMu.Unlock()
	return h.clock
}

func (h *harness) advance(d time.Duration) {
	h.clockMu.Lock()
	h.clock = h.clock.Add(d)
	h.clockMu.Unlock()
}

func (h *harness) start() {
	h.t.Helper()
	store, err := state.Open(h.dir)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := h.cfg
	if h.changelog != nil {
		if err := h.changelog.restore(store); err != nil {
			store.Close()
			h.t.Fatal(err)
		}
		cfg.Changelog = h.changelog
	}
	var rows Sink = h.sink
	if h.sinkOverride != nil {
		rows = h.sinkOverride
	}
	var rater Rater = halfRater{}
	if h.rater != nil {
		rater = h.rater
	}
	e, err := New(cfg, store, h.src, NewDecoder(h.meters), rater, []Sink{rows}, []DeadLetterSink{captureDead{h.sink}},
		NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(harnessLog, nil)))
	if err != nil {
		store.Close()
		h.t.Fatal(err)
	}
	e.now = h.now
	e.noEarlyCheckpoints = !h.earlyCheckpoints
	e.changelogRetry = Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	h.engine, h.cancel, h.done = e, cancel, make(chan error, 1)
	go func() {
		err := e.Run(ctx)
		store.Close()
		h.done <- err
	}()
}

// crash stops the engine at once and starts it again on the same state.
func (h *harness) crash() {
	h.cancel()
	<-h.done
	h.start()
}

// loseDisk stops the engine at once, deletes its state folder (the
// machine is gone) and starts it again from the changelog alone.
func (h *harness) loseDisk() {
	h.t.Helper()
	h.cancel()
	<-h.done
	if err := os.RemoveAll(h.dir); err != nil {
		h.t.Fatal(err)
	}
	h.start()
}

// memChangelog is a task's changelog in memory whose appends fail at
// random, as a Kafka transaction does in a broker outage: before anything
// committed, or after the commit landed (the answer was lost).
type memChangelog struct {
	mu  sync.Mutex
	ops []state.Op // committed, in order; the position is the index
	rng *rand.Rand
	// lost and landed count the failed appends of each kind.
	lost, landed int
}

func (m *memChangelog) Append(_ context.Context, ops []state.Op) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fault := m.rng.IntN(3)
	if fault == 0 {
		m.lost++
		return 0, errors.New("broker unreachable: nothing committed")
	}
	for _, op := range ops {
		m.ops = append(m.ops, state.Op{Kind: op.Kind, Key: bytes.Clone(op.Key), Value: bytes.Clone(op.Value)})
	}
	if fault == 1 {
		m.landed++
		return 0, errors.New("commit unconfirmed (it landed)")
	}
	return int64(len(m.ops)), nil
}

// restore applies what the changelog holds past the store's position.
func (m *memChangelog) restore(store *state.Store) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	position, _, err := store.ChangelogPosition()
	if err != nil || position >= int64(len(m.ops)) {
		return err
	}
	return store.Apply(m.ops[position:], int64(len(m.ops)))
}

// stop shuts the engine down gracefully.
func (h *harness) stop() {
	h.engine.Shutdown()
	if err := <-h.done; err != nil {
		h.t.Fatalf("graceful shutdown: %v", err)
	}
}

// checkpoint cuts a checkpoint after everything fed so far and waits until
// the sinks delivered it. It returns the rows and dead letters delivered for
// the first time since the previous call.
func (h *harness) checkpoint(emitOpen bool) ([]RatedRow, []DeadLetter) {
	h.t.Helper()
	reply := make(chan uint64, 1)
	select {
	case h.engine.checkpointRequests <- checkpointRequest{offsets: h.src.offsets(), emitOpen: emitOpen, reply: reply}:
	case err := <-h.done:
		h.t.Fatalf("engine stopped: %v", err)
	}
	var seq uint64
	select {
	case seq = <-reply:
	case <-time.After(30 * time.Second):
		h.t.Fatal("checkpoint not cut within 30s")
	}
	deadline := time.Now().Add(30 * time.Second)
	for h.engine.committedSeq.Load() < seq || h.engine.undeliveredCheckpoints() > 0 {
		if time.Now().After(deadline) {
			h.t.Fatalf("checkpoint %d not delivered within 30s", seq)
		}
		select {
		case err := <-h.done:
			h.t.Fatalf("engine stopped before checkpoint %d was delivered: %v", seq, err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	return h.fresh()
}

// fresh returns what the sinks received since the last call, without
// re-deliveries; a re-delivery must equal the first delivery.
func (h *harness) fresh() ([]RatedRow, []DeadLetter) {
	h.sink.mu.Lock()
	defer h.sink.mu.Unlock()
	var rows []RatedRow
	for _, r := range h.sink.rows[h.rowCursor:] {
		key := fmt.Sprintf("%s#%d", r.Identity(), r.Revision)
		if prev, ok := h.seen[key]; ok {
			if !prev.Quantity.Equal(r.Quantity) || prev.Count != r.Count || !prev.Amount.Equal(r.Amount) {
				h.t.Fatalf("revision %d of %s delivered twice with different totals: %+v then %+v", r.Revision, r.Identity(), prev, r)
			}
			continue
		}
		h.seen[key] = r
		rows = append(rows, r)
	}
	h.rowCursor = len(h.sink.rows)
	var dead []DeadLetter
	for _, d := range h.sink.letters[h.deadCursor:] {
		key := fmt.Sprintf("%s/%d/%d", d.Topic, d.Partition, d.Offset)
		if h.deadSeen[key] {
			continue
		}
		h.deadSeen[key] = true
		dead = append(dead, d)
	}
	h.deadCursor = len(h.sink.letters)
	return rows, dead
}

// final returns the highest revision of every row delivered so far.
func (h *harness) final() map[string]RatedRow {
	best := make(map[string]RatedRow)
	for _, r := range h.seen {
		if prev, ok := best[r.Identity()]; !ok || r.Revision > prev.Revision {
			best[r.Identity()] = r
		}
	}
	return best
}

func formatRows(rows []RatedRow, dead []DeadLetter, duplicates uint64, breakdown bool) string {
	var lines []string
	for _, r := range rows {
		status := "open"
		if r.Final {
			status = "final"
		}
		group := r.GroupKey
		if group == "" {
			group = "-"
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %s..%s rev=%d %s quantity=%s count=%d amount=%s",
			r.Meter, r.Customer, group, r.WindowStart.Format(time.RFC3339), r.WindowEnd.Format(time.RFC3339),
			r.Revision, status, r.Quantity, r.Count, r.Amount))
		if breakdown {
			for _, l := range r.Breakdown {
				lines[len(lines)-1] += fmt.Sprintf("\n  %s: %s x %s = %s", l.Description, l.Units, l.UnitPrice, l.Amount)
			}
		}
	}
	sort.Strings(lines)
	var deadLines []string
	for _, d := range dead {
		deadLines = append(deadLines, fmt.Sprintf("dead %d/%d %s: %s", d.Partition, d.Offset, d.Reason, d.Detail))
	}
	sort.Strings(deadLines)
	lines = append(lines, deadLines...)
	if duplicates > 0 {
		lines = append(lines, fmt.Sprintf("duplicates %d", duplicates))
	}
	if len(lines) == 0 {
		return "(nothing)\n"
	}
	return strings.Join(lines, "\n") + "\n"
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// planRater prices with a rating.Plan, as the binary does.
type planRater struct{ plan *rating.Plan }

func (r planRater) RateEvent(_ rating.Subscriber, meter string, _ time.Time, ev rating.Usage) (rating.EventRating, error) {
	price, ok := r.plan.Meters[meter]
	if !ok {
		return rating.EventRating{}, fmt.Errorf("%w: plan %s does not price it", rating.ErrUnpriced, r.plan.ID)
	}
	if !price.PerEvent() {
		return rating.EventRating{}, nil
	}
	c, err := r.plan.RateEvent(meter, ev.Units(), ev.At(), ev.Dim)
	if err != nil {
		return rating.EventRating{}, err
	}
	return rating.EventRating{PerEvent: true, Amount: c.Amount, Rate: c.Rate}, nil
}

func (r planRater) Currency(_ rating.Subscriber, meter string, _ time.Time) (string, bool) {
	_, ok := r.plan.Meters[meter]
	return r.plan.Currency, ok
}

func (r planRater) IncrementEvents(_ rating.Subscriber, meter string, _ time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error) {
	return r.plan.IncrementEvents(meter, usage, before, after)
}

func (r planRater) PeriodFee(_ rating.Subscriber, meter string, _, _ time.Time, charged decimal.Decimal) (rating.Charge, bool, error) {
	c, ok := r.plan.PeriodFee(meter, charged)
	return c, ok, nil
}

func (r planRater) Increment(_ rating.Subscriber, meter string, _ time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	return r.plan.Increment(meter, before, after)
}
