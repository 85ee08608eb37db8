package engine

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"unsafe"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/state"
)

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkLiveStatePerKey measures the heap held per live key: one SUM
// window with its billing-period aggregate, indexes and one dedup id, for
// 200K customers.
func BenchmarkLiveStatePerKey(b *testing.B) {
	const keys = 200_000
	for b.Loop() {
		s := testShard()
		events := make([]Event, keys)
		for i := range events {
			events[i] = Event{ID: fmt.Sprint("e", i), Customer: fmt.Sprintf("sub-%07d", i), Meter: "sms",
				TimeNs: t0.UnixNano(), value: decimal.NewFromInt(int64(i)), meter: shardMeters.list[0]}
		}
		before := heapInUse()
		for i := range events {
			s.apply(&events[i])
		}
		s.snapshot(&barrier{watermarkNs: minWatermark}) // drop the checkpoint buffers
		after := heapInUse()
		b.ReportMetric(float64(after-before)/keys, "bytes/key")
		runtime.KeepAlive(s)
		runtime.KeepAlive(events)
	}
}

// BenchmarkDedupCapacity measures the memory per remembered event id, and
// the disk per id once checkpointed in Pebble: the whole state folder
// (sstables, and the write-ahead log of what is still in the memtable).
func BenchmarkDedupCapacity(b *testing.B) {
	const ids = 1_000_000
	for b.Loop() {
		d := newDedupSet()
		before := heapInUse()
		for i := range ids {
			d.insert(int64(i/20000)*dedupBucketNs, eventIDHash("src", fmt.Sprint(i), "sms"), uint64(i), 1) // 50 buckets
		}
		// What stays in memory: the index of ids, without the list of ids
		// new since the last checkpoint (32 bytes each, for a second).
		entries := make([]state.DedupEntry, len(d.added))
		for i, a := range d.added {
			entries[i] = state.DedupEntry{BucketNs: a.bucketNs, IDHash: a.id, RoutingHash: a.routingHash}
		}
		d.added = nil
		after := heapInUse() - uint64(len(entries))*uint64(unsafe.Sizeof(state.DedupEntry{}))
		b.ReportMetric(float64(after-before)/ids, "mem-bytes/id")
		// Once their buckets leave memory, the ids are found through the
		// cold index alone.
		d.expire(math.MaxInt64, 1, minWatermark)
		b.ReportMetric(float64(d.cold.bytes())/ids, "cold-bytes/id")

		dir := b.TempDir()
		store, err := state.Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < len(entries); i += 100_000 {
			if err := store.Commit(&state.Checkpoint{Seq: uint64(i + 1), DedupAdds: entries[i:min(i+100_000, len(entries))]}); err != nil {
				b.Fatal(err)
			}
		}
		if err := store.Close(); err != nil {
			b.Fatal(err)
		}
		var size int64
		_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err == nil && (filepath.Ext(path) == ".sst" || filepath.Ext(path) == ".log") {
				size += info.Size()
			}
			return nil
		})
		b.ReportMetric(float64(size)/ids, "disk-bytes/id")
		runtime.KeepAlive(d)
	}
}
