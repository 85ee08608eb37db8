package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// flakySink fails while down is set.
type flakySink struct {
	*captureSink
	down     atomic.Bool
	failures atomic.Int64
}

func (f *flakySink) Write(ctx context.Context, rows []RatedRow) error {
	if f.down.Load() {
		f.failures.Add(1)
		return errors.New("connection refused")
	}
	return f.captureSink.Write(ctx, rows)
}

// TestSinkOutageAppliesBackpressure: while a sink is down the engine keeps
// consuming until maxUndeliveredCheckpoints, then pauses (and says so in
// Ready), and after the sink recovers every row arrives, none twice.
func TestSinkOutageAppliesBackpressure(t *testing.T) {
	h, flaky := newFlakyHarness(t, 1, 3)
	h.cfg.EmitOpenEvery = 20 * time.Millisecond
	h.start()
	defer h.cancel()

	waitUntil(t, "the engine to start", func() bool { return h.engine.Ready() == nil })
	flaky.down.Store(true)
	feed := func(from, n int) {
		for i := from; i < from+n; i++ {
			h.src.append(0, []byte(fmt.Sprintf(`{"id":"%d","customer":"c%d","meter":"sms","time":"2026-03-01T10:00:%02dZ"}`, i, i%5, i%60)))
		}
	}
	// Feed in steps so that several checkpoints hold undelivered rows.
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; h.engine.Ready() == nil; i++ {
		if time.Now().After(deadline) {
			t.Fatal("the engine never reported backpressure while its sink was down")
		}
		feed(i*10, 10)
		h.advance(30 * time.Millisecond) // the fake clock drives emitOpenEvery
		time.Sleep(30 * time.Millisecond)
	}
	if err := h.engine.Ready(); err == nil || !(strings.Contains(err.Error(), "failing") || strings.Contains(err.Error(), "paused")) {
		t.Fatalf("Ready() = %v while the sink is down", err)
	}
	waitUntil(t, "consumption to pause", func() bool {
		h.engine.health.mu.Lock()
		defer h.engine.health.mu.Unlock()
		return h.engine.health.paused
	})
	paused := h.engine.Stats().Consumed
	feed(100000, 50)
	time.Sleep(200 * time.Millisecond)
	if got := h.engine.Stats().Consumed; got != paused {
		t.Errorf("consumed %d records while paused (from %d)", got-paused, paused)
	}
	total := len(h.src.parts[0])

	flaky.down.Store(false)
	waitUntil(t, "consumption to resume and catch up", func() bool {
		return h.engine.Ready() == nil && h.engine.Stats().Consumed >= uint64(total)
	})
	h.checkpoint(true)
	if flaky.failures.Load() == 0 {
		t.Fatal("the sink never failed: the test did not test an outage")
	}
	// Every record counted once: per customer, the highest revision of the
	// 10:00 window holds its records.
	want := make(map[string]int64)
	for i := 0; i < total; i++ {
		var rec struct{ Customer string }
		if err := jsonUnmarshal(h.src.parts[0][i], &rec); err != nil {
			t.Fatal(err)
		}
		want[rec.Customer]++
	}
	h.fresh()
	got := make(map[string]int64)
	for _, r := range h.final() {
		got[r.Customer] += r.Quantity.IntPart()
	}
	for c, n := range want {
		if got[c] != n {
			t.Errorf("customer %s: %d counted, %d sent", c, got[c], n)
		}
	}
}

// newFlakyHarness is a harness of partitions counting SMS, whose row sink
// fails while its down flag is set, cutting checkpoints on the ticker, and
// pausing after maxUndelivered checkpoints; the caller starts it.
func newFlakyHarness(t *testing.T, partitions, maxUndelivered int) (*harness, *flakySink) {
	h := newHarness(t, partitions)
	h.cfg.MaxUndeliveredCheckpoints = maxUndelivered
	h.cfg.CheckpointInterval = 20 * time.Millisecond // the ticker cuts here
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.meters = meters
	flaky := &flakySink{captureSink: h.sink}
	h.sinkOverride = flaky
	return h, flaky
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
