package engine

import (
	"testing"
	"time"
)

// TestRestampedRetryDependsOnTheWatermarkOnly: a retry re-stamped with
// another time is a duplicate while the original's bucket is within the
// dedup horizon of the watermark the retry is applied at, and not after,
// whether or not a barrier has moved the old bucket out of memory yet: the
// same input must not bill differently because a checkpoint happened to run
// between. (The path through a barrier and the store: dedup_restamped.txt.)
func TestRestampedRetryDependsOnTheWatermarkOnly(t *testing.T) {
	s := testShard()
	s.rules.dedupMemoryNs = int64(30 * time.Minute)
	s.rules.dedupHorizonNs = int64(time.Hour)
	at := func(hhmmss string) time.Time {
		v, _ := time.Parse("15:04:05", hhmmss)
		return time.Date(2026, 3, 1, v.Hour(), v.Minute(), v.Second(), 0, time.UTC)
	}
	apply := func(id, customer, when string, wm string) {
		s.watermarkNs = at(wm).UnixNano()
		ev := event(id, customer, at(when), 1, "")
		s.apply(&ev)
	}
	apply("a", "c1", "10:00:01", "10:00:00")
	apply("b", "c2", "10:00:02", "10:00:00")
	apply("a", "c1", "10:20:00", "10:20:00") // re-stamped, within 30 minutes: a duplicate
	apply("b", "c2", "10:00:02", "10:40:00") // same time, bucket still held: a duplicate
	if n := s.pending.duplicates["sms"]; n != 2 {
		t.Fatalf("%d duplicates, want 2", n)
	}
	// 40 minutes on, past the memory horizon, within the dedup horizon,
	// and no barrier ran: the 10:00 bucket is still in memory, and counts.
	apply("a", "c1", "10:40:05", "10:40:00")
	if n := s.pending.duplicates["sms"]; n != 3 {
		t.Fatalf("a retry re-stamped within the dedup horizon counted again: %d duplicates, want 3", n)
	}
	// Past the dedup horizon the original is forgotten, in memory or not:
	// the retry counts, and is remembered in its own bucket.
	apply("a", "c1", "11:00:30", "11:00:25")
	if n := s.pending.duplicates["sms"]; n != 3 {
		t.Fatalf("a retry re-stamped past the dedup horizon counted as a duplicate before any barrier: %d duplicates", n)
	}
	apply("a", "c1", "11:00:30", "11:00:25")
	if n := s.pending.duplicates["sms"]; n != 4 {
		t.Fatalf("%d duplicates, want 4", n)
	}
}
