package engine

import (
	"fmt"
	"testing"
	"time"
)

// TestBackpressurePauseIsNotIdleness: a pause longer than idleTimeout, with
// records waiting in both partitions, must not make either look idle. Before
// fetchState, every partition looked silent after the pause, the first batch
// taken set the watermark alone, and the other partition's on-time records
// were dead-lettered as late.
func TestBackpressurePauseIsNotIdleness(t *testing.T) {
	h, flaky := newFlakyHarness(t, 2, 1)
	h.cfg.AllowedLateness = 0
	h.cfg.IdleTimeout = 30 * time.Second
	h.cfg.ReviseHorizon = time.Minute
	h.start()
	defer h.cancel()
	rec := func(id int, customer, at string) []byte {
		return []byte(fmt.Sprintf(`{"id":"%d","customer":%q,"meter":"sms","time":"2026-03-01T%sZ"}`, id, customer, at))
	}
	waitUntil(t, "the engine to start", func() bool { return h.engine.Ready() == nil })
	h.src.append(0, rec(1, "a", "10:00:10"))
	h.src.append(1, rec(2, "b", "10:00:20"))
	waitUntil(t, "the first records", func() bool { return h.engine.Stats().Consumed == 2 })

	// Close the 10:00 windows while the sink is down: their rows cannot be
	// delivered, and consumption pauses.
	flaky.down.Store(true)
	h.src.append(0, rec(3, "a", "10:01:30"))
	h.src.append(1, rec(4, "b", "10:01:40"))
	waitUntil(t, "consumption to pause", func() bool {
		h.engine.health.mu.Lock()
		defer h.engine.health.mu.Unlock()
		return h.engine.health.paused
	})

	// During the pause both partitions get records, partition 0 far ahead;
	// the pause lasts longer than idleTimeout. The readers fetch them and
	// queue them in this order.
	h.src.append(0, rec(5, "a", "10:30:00"))
	time.Sleep(50 * time.Millisecond)
	h.src.append(1, rec(6, "b", "10:02:00"))
	time.Sleep(50 * time.Millisecond)
	h.advance(2 * time.Minute)
	flaky.down.Store(false)
	waitUntil(t, "consumption to resume", func() bool { return h.engine.Stats().Consumed == 6 })
	h.checkpoint(false)
	for _, l := range h.sink.letters {
		t.Errorf("dead letter %s at %s/%d: %s", l.Reason, l.Topic, l.Offset, l.Detail)
	}
	if flaky.failures.Load() == 0 {
		t.Fatal("the sink never failed: nothing was paused")
	}
}

// TestFetchStateIdleness pins the rule: idle only when asking for longer
// than the timeout with nothing queued.
func TestFetchStateIdleness(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	var f fetchState
	if f.idleFor(t0.Add(time.Hour), time.Second) {
		t.Fatal("a reader that never asked is idle")
	}
	f.waiting(t0)
	f.waiting(t0.Add(time.Minute)) // asking again keeps the first time
	if !f.idleFor(t0.Add(2*time.Second), time.Second) {
		t.Fatal("a reader asking for 2s with nothing queued is not idle after 1s")
	}
	f.fetched()
	f.waiting(t0.Add(time.Minute))
	if f.idleFor(t0.Add(time.Hour), time.Second) {
		t.Fatal("a partition with a batch not taken is idle")
	}
	f.taken()
	if !f.idleFor(t0.Add(time.Hour), time.Second) || f.idleFor(t0.Add(time.Minute), time.Second) {
		t.Fatal("idleness after the batch was taken is not counted from the new ask")
	}
}
