package engine

import (
	"sync/atomic"
	"time"
)

// fetchState tells the dispatcher whether a partition had nothing to give,
// as opposed to having records the engine did not take (backpressure, a
// busy dispatcher). Idleness must mean the first: a partition whose records
// wait in a queue is not idle, however long it waits, or the watermark
// would jump past its on-time records and they would be dead-lettered as
// late (see Engine.watermark).
//
// Its reader writes it, the dispatcher reads it; both through atomics.
type fetchState struct {
	// waitingSinceNs is the wall-clock time (e.now) the reader asked the
	// source for records and has not yet got any; 0 while it holds or
	// hands over records.
	waitingSinceNs atomic.Int64
	// queued counts batches the reader produced that the dispatcher has not
	// taken yet.
	queued atomic.Int64
}

// waiting marks the reader as asking for records from now on, unless it
// was already asking (a fetch that returned nothing asks again).
func (f *fetchState) waiting(now time.Time) { f.waitingSinceNs.CompareAndSwap(0, now.UnixNano()) }

// fetched marks the reader as holding records: the partition is not idle
// until the dispatcher has taken them and the reader asked again.
func (f *fetchState) fetched() {
	f.queued.Add(1)
	f.waitingSinceNs.Store(0)
}

// taken is the dispatcher's receipt of one batch.
func (f *fetchState) taken() { f.queued.Add(-1) }

// idleFor reports whether the partition has had nothing to give for longer
// than timeout at now: its reader has been asking for that long and every
// batch it produced was taken. The reader marks fetched (queued first) before
// it clears waiting, so a reader that just got records is never seen idle
// with them in hand, whatever order the two loads interleave with it.
func (f *fetchState) idleFor(now time.Time, timeout time.Duration) bool {
	since := f.waitingSinceNs.Load()
	if since == 0 || f.queued.Load() > 0 {
		return false
	}
	return now.UnixNano()-since > int64(timeout)
}
