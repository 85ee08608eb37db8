package engine

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tally-billing/tally/state"
)

// stallSource is a memSource whose partition 1 stops answering at offset 7
// while stalled: a Kafka reader retrying a broker that is down (its Fetch
// loops inside, reconnecting), with records known to wait (HighWater 14).
type stallSource struct {
	*memSource
	stalled atomic.Bool
}

func (s *stallSource) Open(ctx context.Context, p PartitionID, offset int64) (PartitionReader, error) {
	r, _ := s.memSource.Open(ctx, p, offset)
	return &stallReader{memReader: r.(*memReader), src: s}, nil
}

type stallReader struct {
	*memReader
	src *stallSource
}

func (r *stallReader) Fetch(ctx context.Context) ([]Record, error) {
	for r.partition == 1 && r.next >= 7 && r.src.stalled.Load() {
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return r.memReader.Fetch(ctx)
}

// TestSlowPartitionIsNotIdle: partition 1 has a backlog (lag 7, known from
// its high-water mark) when its broker becomes unreachable for longer than
// idleTimeout; partition 0 has drained at 10:30. Every partition now looks
// idle, the watermark jumps to 10:30 and partition 1's on-time 10:00
// backlog is dead-lettered as late once the broker is back.
func TestSlowPartitionIsNotIdle(t *testing.T) {
	h := newHarness(t, 2)
	h.cfg.AllowedLateness = 0
	h.cfg.IdleTimeout = 30 * time.Second
	h.cfg.ReviseHorizon = time.Minute
	h.cfg.CheckpointInterval = 20 * time.Millisecond
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.meters = meters
	src := &stallSource{memSource: h.src}
	src.stalled.Store(true)
	store, err := state.Open(h.dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(h.cfg, store, src, NewDecoder(h.meters), halfRater{}, []Sink{h.sink}, []DeadLetterSink{captureDead{h.sink}},
		NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(harnessLog, nil)))
	if err != nil {
		t.Fatal(err)
	}
	e.now = h.now
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx); store.Close() }()
	defer func() { cancel(); <-done }()

	rec := func(id int, customer, at string) []byte {
		return []byte(fmt.Sprintf(`{"id":"%d","customer":%q,"meter":"sms","time":"2026-03-01T%sZ"}`, id, customer, at))
	}
	// All 14 at once: the reader's first fetch takes 7 (memReader's most)
	// and it stalls at offset 7.
	var backlog [][]byte
	for i := range 14 {
		backlog = append(backlog, rec(100+i, "b", fmt.Sprintf("10:00:%02d", i)))
	}
	h.src.append(1, backlog...)
	h.src.append(0, rec(1, "a", "10:30:00"))
	waitUntil(t, "8 records", func() bool { return e.Stats().Consumed == 8 })
	time.Sleep(100 * time.Millisecond)
	h.advance(31 * time.Second) // the broker stays down past idleTimeout
	time.Sleep(200 * time.Millisecond)
	t.Logf("watermark during the outage: %s", time.Unix(0, e.stats.watermarkNs.Load()).UTC().Format(time.RFC3339))
	src.stalled.Store(false) // the broker is back
	waitUntil(t, "15 records", func() bool { return e.Stats().Consumed == 15 })
	time.Sleep(200 * time.Millisecond)
	h.sink.mu.Lock()
	defer h.sink.mu.Unlock()
	for _, l := range h.sink.letters {
		t.Errorf("on-time record dead-lettered: %s at %s/%d: %s", l.Reason, l.Topic, l.Offset, l.Detail)
	}
}
