package state

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"
)

// BenchmarkCommit measures one synced checkpoint of n dirty windows (~40 B
// keys, ~30 B values) and n/10 outbox rows (~300 B).
func BenchmarkCommit(b *testing.B) {
	for _, n := range []int{1000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("windows=%d", n), func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			cp := &Checkpoint{Outbox: map[Stream][][]byte{}}
			for i := range n {
				cp.WindowPuts = append(cp.WindowPuts, KV{Key: windowBenchKey(i, 1), Value: make([]byte, 30)})
				if i%10 == 0 {
					cp.Outbox[StreamRated] = append(cp.Outbox[StreamRated], make([]byte, 300))
				}
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				cp.Seq = uint64(i + 1)
				if err := s.Commit(cp); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "windows/s")
		})
	}
}

// BenchmarkCheckpointStream measures a run of checkpoints as a busy engine
// cuts them: each has 100K new dedup ids (in the two 10 s buckets the second
// spans), 50K dirty windows out of 200K live ones and 5K outbox rows, and
// dedup buckets expire 60 s behind. Pebble's flushes and compactions run in
// the background on the other core; the CPU they take is reported too.
func BenchmarkCheckpointStream(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const ids, windows, live = 100_000, 50_000, 200_000
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var n uint64
	rng := rand.New(rand.NewPCG(1, 1))
	start := cpu()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		second := int64(i)
		cp := busyCheckpoint(uint64(i+1), second, &n, ids, windows, func(j int) []byte {
			return windowBenchKey((i*windows+j)%live, 1)
		})
		// Shards list dirty windows in the order records first touched
		// them: random customers.
		rng.Shuffle(len(cp.WindowPuts), func(a, b int) { cp.WindowPuts[a], cp.WindowPuts[b] = cp.WindowPuts[b], cp.WindowPuts[a] })
		if second >= 60 {
			cp.DedupExpireBeforeNs = (second - 60) * 1e9
		}
		if err := s.Commit(cp); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpu()-start)/float64(b.N)/1e6, "cpu-ms/checkpoint")
}

// BenchmarkHasDedup measures looking up an event id in the store, as the
// engine does for records older than the dedup memory horizon: 1M ids in
// sstables (reopened, so nothing is in the memtable).
func BenchmarkHasDedup(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	const ids = 1_000_000
	id := func(i int) [16]byte {
		var h [16]byte
		binary.BigEndian.PutUint64(h[:], uint64(i)*0x9e3779b97f4a7c15)
		binary.BigEndian.PutUint64(h[8:], uint64(i))
		return h
	}
	var batch []DedupEntry
	for i := range ids {
		batch = append(batch, DedupEntry{BucketNs: int64(i/10000) * 60e9, IDHash: id(i)})
		if len(batch) == 100_000 {
			if err := s.Commit(&Checkpoint{Seq: uint64(i), DedupAdds: batch}); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	s.Close()
	if s, err = Open(dir); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for _, tt := range []struct {
		name    string
		present bool
	}{{"absent", false}, {"present", true}} {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				n := (i * 7919) % ids
				key := id(n)
				if !tt.present {
					key[15] ^= 0xff // same bucket, another id
				}
				found, err := s.HasDedup(int64(n/10000)*60e9, key)
				if err != nil || found != tt.present {
					b.Fatalf("HasDedup = %v, %v; want %v", found, err, tt.present)
				}
			}
		})
	}
}

// BenchmarkCommitPublished measures a checkpoint of a task with a
// changelog: CommitPublished lists every change, and publish builds each
// one's changelog record value, as kafka.ChangelogWriter does before it
// produces them. 50K dirty windows, 5K outbox rows, 100K dedup ids.
func BenchmarkCommitPublished(b *testing.B) {
	s, err := Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const ids, windows = 100_000, 50_000
	var position int64
	var bytesOut int
	publish := func(ops []Op) (int64, error) {
		for _, op := range ops {
			bytesOut += len(op.Key) + len(op.Record())
		}
		position += int64(len(ops))
		return position, nil
	}
	var n uint64
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		cp := busyCheckpoint(uint64(i+1), int64(i), &n, ids, windows, func(j int) []byte { return windowBenchKey(j, uint64(i)) })
		b.StartTimer()
		if err := s.CommitPublished(cp, publish); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(bytesOut)/float64(b.N)/1e6, "MB-published/checkpoint")
}

// busyCheckpoint is checkpoint seq as a busy engine cuts it at second:
// ids new dedup ids (numbered on from *n, in the 10 s bucket of second), a
// dirty window (40 B) for each key(j), j < windows, and an outbox row
// (150 B) for every tenth window.
func busyCheckpoint(seq uint64, second int64, n *uint64, ids, windows int, key func(j int) []byte) *Checkpoint {
	cp := &Checkpoint{Seq: seq, Outbox: map[Stream][][]byte{}}
	for range ids {
		*n++
		var h [16]byte
		binary.BigEndian.PutUint64(h[:], *n*0x9e3779b97f4a7c15)
		binary.BigEndian.PutUint64(h[8:], *n)
		cp.DedupAdds = append(cp.DedupAdds, DedupEntry{BucketNs: (second - second%10) * 1e9, IDHash: h, RoutingHash: *n})
	}
	for j := range windows {
		cp.WindowPuts = append(cp.WindowPuts, KV{Key: key(j), Value: make([]byte, 40)})
		if j%10 == 0 {
			cp.Outbox[StreamRated] = append(cp.Outbox[StreamRated], make([]byte, 150))
		}
	}
	return cp
}

// windowBenchKey is the state key of window w of a voice meter, ending at end.
func windowBenchKey(w int, end uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(fmt.Sprintf("voice_seconds\x00sub-%07d\x00destination=uk\x00", w)), end)
}
