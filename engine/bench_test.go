package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/bench/gen"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

func BenchmarkDecode(b *testing.B) {
	g := gen.New(1, 10000)
	records := make([][]byte, 1024)
	size := 0
	for i := range records {
		u := g.Next(t0)
		if i%2 == 0 {
			records[i] = u.PlainJSON()
		} else {
			records[i] = u.CloudEventJSON()
		}
		size += len(records[i])
	}
	d := NewDecoder(benchMeters(b))
	b.SetBytes(int64(size / len(records)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := d.Decode(records[i%len(records)], nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkShardApply measures dedup + aggregation of decoded events in one
// shard, 100K customers, with a barrier every 100K events.
func BenchmarkShardApply(b *testing.B) {
	benchmarkShardApply(b, nil)
}

// BenchmarkShardApplyWatched is BenchmarkShardApply priced by a plan whose
// meters all have entitlements (limits never reached), watched as when an
// ActionSink takes their crossings: the cost of watching limits record by
// record (with=false: the same plan without entitlements).
func BenchmarkShardApplyWatched(b *testing.B) {
	for _, with := range []bool{false, true} {
		entitlement := ""
		if with {
			entitlement = `, entitlement: {limit: "1000000000000000", thresholds: [50, 80, 100]}`
		}
		catalog, err := rating.ParseCatalog(fmt.Appendf(nil, `
id: capped
currency: EUR
meters:
  voice_seconds: {model: per_unit, unitPrice: "0.001"%[1]s}
  sms: {model: per_unit, unitPrice: "0.05"%[1]s}
  data_bytes: {model: per_unit, unitPrice: "0.0000001"%[1]s}
`, entitlement))
		if err != nil {
			b.Fatal(err)
		}
		subs, err := rating.NewSubscriptions(nil, catalog)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprint("with=", with), func(b *testing.B) {
			benchmarkShardApply(b, rating.NewPricing(catalog, subs, "capped"))
		})
	}
}

// benchmarkShardApply applies events to one shard rated by rater (nil:
// the test rater), watching entitlements when rater has some.
func benchmarkShardApply(b *testing.B, rater Rater) {
	g := gen.New(2, 100000)
	d := NewDecoder(benchMeters(b))
	events := make([]Event, 0, 100000)
	for i := range cap(events) {
		var err error
		events, err = d.Decode(g.Next(t0.Add(time.Duration(i)*time.Millisecond)).PlainJSON(), events)
		if err != nil {
			b.Fatal(err)
		}
	}
	s := testShard()
	s.meters = d.meters
	if rater != nil {
		s.rater = rater
		rules, ok := rater.(EntitlementRules)
		s.watchLimits = ok && rules.HasEntitlements()
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev := events[i%len(events)]
		ev.ID = fmt.Sprint(i) // every event new: measures the dedup insert too
		s.apply(&ev)
		if i%len(events) == len(events)-1 {
			s.snapshot(&barrier{watermarkNs: s.watermarkNs})
		}
	}
}

func benchMeters(b *testing.B) *Meters {
	m, err := CompileMeters([]Meter{
		{Name: "voice_seconds", GroupBy: []string{"destination"}},
		{Name: "sms", GroupBy: []string{"destination"}},
		{Name: "data_bytes", GroupBy: []string{"rat"}},
	}, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// BenchmarkUsageQueryUnderLoad measures live queries (one customer, every
// meter) while the engine ingests continuously: 50K customers, records fed in
// batches of 1000 by another goroutine. Reports p50/p99 latency.
func BenchmarkUsageQueryUnderLoad(b *testing.B) {
	benchmarkQueryUnderLoad(b, nil, func(ctx context.Context, e *Engine, customer string) error {
		_, err := e.Usage(ctx, UsageRequest{Customer: customer, Windows: true})
		return err
	})
}

// cappedPricing prices benchMeters under one plan whose voice_seconds
// are limited to 100,000 a period (thresholds 80% and 100%).
func cappedPricing(b *testing.B) *rating.Pricing {
	catalog, err := rating.ParseCatalog([]byte(`
plans:
  - id: capped
    currency: EUR
    meters:
      voice_seconds: {model: per_unit, unitPrice: "0.001", entitlement: {limit: "100000", thresholds: [80, 100]}}
      sms: {model: per_unit, unitPrice: "0.05"}
      data_bytes: {model: per_unit, unitPrice: "0.0000001"}
`))
	if err != nil {
		b.Fatal(err)
	}
	subs, err := rating.NewSubscriptions(nil, catalog)
	if err != nil {
		b.Fatal(err)
	}
	return rating.NewPricing(catalog, subs, "capped")
}

// BenchmarkEntitlementCheckUnderLoad measures the entitlement check (are
// 10 more units allowed now) of one customer at a time against live state,
// while the engine ingests as fast as it can.
func BenchmarkEntitlementCheckUnderLoad(b *testing.B) {
	ten := decimal.NewFromInt(10)
	benchmarkQueryUnderLoad(b, cappedPricing(b), func(ctx context.Context, e *Engine, customer string) error {
		_, err := e.CheckEntitlement(ctx, customer, "voice_seconds", ten)
		return err
	})
}

// timedActions records when each action was first delivered.
type timedActions struct {
	mu   sync.Mutex
	when map[string]time.Time
}

func (c *timedActions) Name() string { return "timed-actions" }

func (c *timedActions) WriteActions(_ context.Context, actions []ProvisioningAction) error {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range actions {
		if _, ok := c.when[a.ID]; !ok {
			c.when[a.ID] = now
		}
	}
	return nil
}

// BenchmarkRecordToAction measures how long a record that crosses an
// entitlement's threshold takes to reach an ActionSink as an action, with
// the engine fed 100K records/s (1,000 every 10 ms, paced by the wall
// clock) and checkpoints every second (the default) or every 250 ms: each
// tick one of them is a new customer's record that crosses its limit. Run
// it with a count of ticks: -benchtime=1000x is 10 s.
func BenchmarkRecordToAction(b *testing.B) {
	for _, every := range []time.Duration{time.Second, 250 * time.Millisecond} {
		b.Run("checkpointInterval="+every.String(), func(b *testing.B) { benchmarkRecordToAction(b, every) })
	}
}

func benchmarkRecordToAction(b *testing.B, checkpointInterval time.Duration) {
	h := newHarness(b, 2)
	h.meters = benchMeters(b)
	h.rater = cappedPricing(b)
	h.cfg.CheckpointInterval = checkpointInterval
	h.cfg.DeltaBaseMinBytes = 0 // the production rule (newHarness picks one by test name)
	h.earlyCheckpoints = true
	sink := &timedActions{when: make(map[string]time.Time)}
	h.cfg.ActionSinks = []ActionSink{sink}
	h.start()
	defer func() { h.cancel(); <-h.done }()
	g := gen.New(3, 50000)
	at := t0
	sent := make(map[string]time.Time)
	batch := make([][]byte, 0, 1000)
	next := time.Now()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		batch = batch[:0]
		for range 999 {
			batch = append(batch, g.Next(at).PlainJSON())
		}
		customer := fmt.Sprintf("lat-%d", i)
		batch = append(batch, fmt.Appendf(nil, `{"id":"%s","customer":"%s","meter":"voice_seconds","time":%q,"value":100000,"dims":{"destination":"uk"}}`,
			customer, customer, at.Format(time.RFC3339Nano)))
		sent[customer+"|voice_seconds|"] = time.Now()
		h.src.append(i%2, batch...)
		at = at.Add(10 * time.Millisecond)
		next = next.Add(10 * time.Millisecond)
		time.Sleep(time.Until(next))
	}
	fed := b.N * 1000
	elapsed := b.Elapsed()
	checkpoints := h.engine.committedSeq.Load()
	deadline := time.Now().Add(30 * time.Second)
	var latencies []time.Duration
	for {
		latencies = latencies[:0]
		sink.mu.Lock()
		for id, when := range sink.when {
			if !strings.HasSuffix(id, "|limit|100") {
				continue
			}
			prefix := id[:strings.Index(id, "|voice_seconds|")+len("|voice_seconds|")]
			latencies = append(latencies, when.Sub(sent[prefix]))
		}
		sink.mu.Unlock()
		if len(latencies) == b.N || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(latencies) != b.N {
		b.Fatalf("%d of %d crossings reached the sink within 30 s", len(latencies), b.N)
	}
	slices.Sort(latencies)
	b.ReportMetric(float64(latencies[len(latencies)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Milliseconds()), "p99-ms")
	b.ReportMetric(float64(latencies[len(latencies)-1].Milliseconds()), "max-ms")
	b.ReportMetric(float64(fed)/elapsed.Seconds(), "fed-rec/s")
	b.ReportMetric(float64(checkpoints)/elapsed.Seconds(), "checkpoints/s")
}

// benchmarkQueryUnderLoad times query, one customer of 50K at a time,
// while a goroutine feeds the engine (rated by rater, or halfRater) as
// fast as it keeps up, and reports the latency's p50 and p99.
func benchmarkQueryUnderLoad(b *testing.B, rater Rater, query func(ctx context.Context, e *Engine, customer string) error) {
	h := newHarness(b, 2)
	h.meters = benchMeters(b)
	h.rater = rater
	h.start()
	defer h.cancel()
	g := gen.New(3, 50000)
	feed := func(n int, at time.Time) {
		batch := make([][]byte, 0, n)
		for range n {
			batch = append(batch, g.Next(at).PlainJSON())
		}
		h.src.append(g.Intn(2), batch...)
	}
	for i := range 200 {
		feed(1000, t0.Add(time.Duration(i)*100*time.Millisecond))
	}
	h.checkpoint(false)
	stop := make(chan struct{})
	var fed atomic.Int64
	go func() {
		at := t0.Add(20 * time.Second)
		for {
			select {
			case <-stop:
				return
			default:
			}
			feed(1000, at)
			fed.Add(1000)
			at = at.Add(10 * time.Millisecond)
			if h.engine.Stats().Lag > 50000 {
				time.Sleep(time.Millisecond) // keep the backlog bounded
			}
		}
	}()
	var latencies []time.Duration
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if err := query(ctx, h.engine, fmt.Sprintf("sub-%06d", i%50000)); err != nil {
			b.Fatal(err)
		}
		latencies = append(latencies, time.Since(start))
	}
	close(stop)
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
	b.ReportMetric(float64(fed.Load())/b.Elapsed().Seconds(), "ingest-rec/s")
}

// BenchmarkAggregate measures the per-record cost of each aggregation in a
// shard (window + billing period + dedup), 10K customers, decoded events.
func BenchmarkAggregate(b *testing.B) {
	for _, agg := range []Aggregation{AggSum, AggCount, AggMin, AggMax, AggAvg, AggLatest, AggUniqueCount, AggUniqueCountApprox} {
		b.Run(string(agg), func(b *testing.B) {
			meter := Meter{Name: "m", Aggregation: agg, Decimal: true}
			if agg == AggUniqueCount || agg == AggUniqueCountApprox {
				meter.ValuePath = "dims.device"
			}
			meters, err := CompileMeters([]Meter{meter}, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			s := testShard()
			s.meters = meters
			events := make([]Event, 100_000)
			for i := range events {
				events[i] = Event{ID: fmt.Sprint(i), Customer: fmt.Sprintf("c%05d", i%10000), Meter: "m",
					TimeNs: t0.Add(time.Duration(i) * time.Millisecond).UnixNano(), value: decimal.NewFromInt(int64(i % 1000)),
					Text: fmt.Sprint("d", i%300), meter: meters.list[0]}
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ev := events[i%len(events)]
				if i >= len(events) {
					ev.ID = fmt.Sprint(i) // new ids after the first pass
				}
				s.apply(&ev)
				if i%len(events) == len(events)-1 {
					s.snapshot(&barrier{watermarkNs: s.watermarkNs})
				}
			}
		})
	}
}

// BenchmarkCore is the engine core without I/O on one core: decode a
// record (telecom mix with IoT, Zipf customers, time advancing 100 µs per
// record), deduplicate, aggregate, and every 100K records a barrier that
// rates and emits the windows due and encodes the checkpoint's state.
func BenchmarkCore(b *testing.B) {
	g := gen.NewWith(3, 100_000, gen.Options{Zipf: 1.1, IoTPercent: 20})
	records := make([][]byte, 1_000_000)
	for i := range records {
		records[i] = g.Next(t0.Add(time.Duration(i) * 100 * time.Microsecond)).PlainJSON()
	}
	meters, err := CompileMeters([]Meter{
		{Name: "voice_seconds", GroupBy: []string{"destination"}},
		{Name: "sms", Aggregation: AggCount, GroupBy: []string{"destination"}},
		{Name: "data_bytes", GroupBy: []string{"rat"}},
		{Name: gen.IoTMeter, GroupBy: []string{"device"}},
	}, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	d := NewDecoder(meters)
	in := NewInterner() // as a partition reader decodes
	s := testShard()
	s.meters = meters
	var events []Event
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i == len(records) {
			b.Fatal("more iterations than records; use -benchtime up to 1000000x")
		}
		events, err = d.DecodeInterned(records[i], events[:0], time.Time{}, in)
		if err != nil {
			b.Fatal(err)
		}
		s.watermarkNs = max(s.watermarkNs, events[0].TimeNs-int64(2*time.Second))
		for j := range events {
			s.apply(&events[j])
		}
		if i%100_000 == 99_999 {
			s.snapshot(&barrier{watermarkNs: s.watermarkNs})
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkParseTime: whether parseTimeFast earns its lines against
// parseTime (time.Parse), on the usual UTC stamp.
func BenchmarkParseTime(b *testing.B) {
	stamp := []byte("2026-03-01T10:00:00.123Z")
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := parseTimeFast(stamp); !ok {
				b.Fatal("not parsed")
			}
		}
	})
	b.Run("time.Parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := parseTime(string(stamp)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSeenNewID: what dedup costs a new record (the usual case: its id
// is not remembered), with the cold index empty and holding the ids of an
// hour at 5.5K records/s (20M), whose probe misses the cache.
func BenchmarkSeenNewID(b *testing.B) {
	for _, coldIDs := range []int{0, 20_000_000} {
		b.Run(fmt.Sprint("cold=", coldIDs), func(b *testing.B) {
			s := testShard()
			s.watermarkNs = t0.UnixNano()
			expiry := s.rules.dedupExpiry(s.watermarkNs)
			for i := range coldIDs {
				s.dedup.cold.add(eventIDHash("", fmt.Sprint("old", i), "sms"), expiry+int64(i%300)*dedupBucketNs, expiry)
			}
			ids := make([]idHash, 1<<20)
			for i := range ids {
				ids[i] = eventIDHash("", fmt.Sprint("new", i), "sms")
			}
			ev := event("x", "c1", t0, 1, "")
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if s.seen(&ev, ids[i&(len(ids)-1)]) {
					b.Fatal("a new id seen")
				}
				i++
				if i&(len(ids)-1) == 0 { // forget the round's ids, as expiry would
					s.dedup.ids = idTable{}
					s.dedup.added = s.dedup.added[:0]
				}
			}
		})
	}
}

// BenchmarkRecover measures a restart's recovery of n live windows from
// the local store (the delta log and the windows' own keys), from opening
// the store to the shards holding every window: what a crashed task costs
// before it reads again.
func BenchmarkRecover(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("windows=%d", n), func(b *testing.B) {
			h := newHarness(b, 1)
			h.cfg.Shards = 2
			h.cfg.DeltaBaseMinBytes = 0 // the default: bases as a running engine writes them
			meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			h.meters = meters
			h.start()
			const batch = 50_000
			for i := 0; i < n; i += batch {
				records := make([][]byte, 0, batch)
				for j := i; j < min(i+batch, n); j++ {
					records = append(records, fmt.Appendf(nil, `{"id":"%d","customer":"c%d","meter":"sms","time":"2026-01-01T00:00:01Z"}`, j, j))
				}
				h.src.append(0, records...)
				h.checkpoint(false)
			}
			h.cancel()
			<-h.done
			h.engine = nil // its windows are garbage now
			runtime.GC()
			b.ResetTimer()
			for b.Loop() {
				store, err := state.Open(h.dir)
				if err != nil {
					b.Fatal(err)
				}
				e, err := New(h.cfg, store, h.src, NewDecoder(h.meters), halfRater{}, []Sink{h.sink}, []DeadLetterSink{captureDead{h.sink}},
					NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
				if err != nil {
					b.Fatal(err)
				}
				if _, err := e.recover(context.Background()); err != nil {
					b.Fatal(err)
				}
				live := 0
				for _, s := range e.shards {
					live += len(s.windows)
				}
				if live != n {
					b.Fatalf("recovered %d live windows, want %d", live, n)
				}
				store.Close()
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "windows/s")
		})
	}
}

// BenchmarkEmitOpen measures the shard's side of a graceful stop: one
// barrier that emits 200K open windows, each of its own customer, as
// provisional revisions (rating, the rows encoded for the outbox, the
// delta of every window).
func BenchmarkEmitOpen(b *testing.B) {
	const n = 200_000
	s := testShard()
	for i := range n {
		ev := event(fmt.Sprintf("e%d", i), fmt.Sprintf("c%d", i), t0.Add(time.Duration(i%50)*time.Second), 3, "")
		s.apply(&ev)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		snap := s.snapshot(&barrier{watermarkNs: t0.UnixNano(), emitOpen: true})
		if snap.err != nil || len(snap.encodedRows) != n {
			b.Fatalf("emitted %d rows (%v), want %d", len(snap.encodedRows), snap.err, n)
		}
		b.StopTimer()
		for _, w := range s.windows {
			s.touch(w)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "windows/s")
}
