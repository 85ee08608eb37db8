package state

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestChangelogCompactsToTheState: the changes a store publishes, compacted
// as Kafka compacts them (the latest record per key, tombstones dropped
// after a while), restore exactly the store's content, also after range
// deletes (delivered outbox entries, expired dedup ids, finalized
// windows): every key a range removes gets a tombstone of its own.
func TestChangelogCompactsToTheState(t *testing.T) {
	src, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var log []Op
	publish := func(ops []Op) (int64, error) {
		// As the changelog carries them: a record per change.
		for _, op := range ops {
			back, err := OpFromRecord(bytes.Clone(op.Key), bytes.Clone(op.Record()))
			if err != nil {
				return 0, err
			}
			log = append(log, back)
		}
		return int64(len(log)), nil
	}
	windowKey := func(end int64, name string) []byte {
		return append(binary.BigEndian.AppendUint64(nil, uint64(end)), name...)
	}
	for seq := uint64(1); seq <= 20; seq++ {
		cp := &Checkpoint{Seq: seq, Outbox: map[Stream][][]byte{StreamRated: {[]byte(fmt.Sprintf("row %d", seq))}},
			Partitions: []PartitionProgress{{Topic: "usage", Partition: 0, NextOffset: int64(seq * 10)}}}
		cp.WindowPuts = []KV{{Key: windowKey(int64(seq*100), "w"), Value: []byte(fmt.Sprint(seq))},
			{Key: windowKey(int64(seq*100+50), "v"), Value: []byte(fmt.Sprint(seq))}}
		cp.DedupAdds = []DedupEntry{{BucketNs: int64(seq) * 10e9, IDHash: [16]byte{byte(seq)}}}
		if seq > 5 {
			cp.OutboxTrim = map[Stream]OutboxPos{StreamRated: {Seq: seq - 3}}
			cp.DedupExpireBeforeNs = int64(seq-4) * 10e9
			cp.WindowsFinalizedBeforeNs = int64((seq - 5) * 100)
		}
		if err := src.CommitPublished(cp, publish); err != nil {
			t.Fatal(err)
		}
	}
	for _, dropTombstones := range []bool{false, true} {
		// Kafka's compaction: the last record of each key, in log order.
		last := make(map[string]int)
		for i, op := range log {
			last[string(op.Key)] = i
		}
		var compacted []Op
		for i, op := range log {
			if last[string(op.Key)] != i || (dropTombstones && op.Kind == OpDelete) {
				continue
			}
			compacted = append(compacted, op)
		}
		dst, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if err := dst.Apply(compacted, int64(len(log))); err != nil {
			t.Fatal(err)
		}
		// And compaction keeps nothing a range removed: the changelog
		// stays the size of the state, not of its history.
		if sets, live := countSets(compacted), countLive(t, src); sets != live {
			t.Errorf("drop tombstones %v: %d sets survive compaction, the state has %d keys", dropTombstones, sets, live)
		}
		if a, b := dump(t, src), dump(t, dst); a != b {
			t.Errorf("drop tombstones %v: restored from %d of %d records:\n%s\nwant\n%s", dropTombstones, len(compacted), len(log), b, a)
		}
		dst.Close()
	}
}

// dump lists a store's keys and values, but its own bookkeeping.
func dump(t *testing.T, s *Store) string {
	it, err := s.db.NewIter(&pebble.IterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var b bytes.Buffer
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if bytes.Equal(k, keyChangelog) || bytes.Equal(k, keyFormat) {
			continue
		}
		fmt.Fprintf(&b, "%q=%q\n", k, it.Value())
	}
	return b.String()
}

func countSets(ops []Op) int {
	n := 0
	for _, op := range ops {
		if op.Kind == OpSet {
			n++
		}
	}
	return n
}

func countLive(t *testing.T, s *Store) int {
	return bytes.Count([]byte(dump(t, s)), []byte("\n"))
}

// TestGoneRestoredFromChangelog: the deletion bounds travel with the
// checkpoints' ops, so a task restored from its changelog keeps them.
func TestGoneRestoredFromChangelog(t *testing.T) {
	src, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var log []Op
	publish := func(ops []Op) (int64, error) { log = append(log, ops...); return int64(len(log)), nil }
	for seq := uint64(1); seq <= 3; seq++ {
		if err := src.CommitPublished(&Checkpoint{Seq: seq, Gone: &Gone{WindowEndNs: int64(seq), SettleNs: math.MinInt64, DedupBucketNs: 5}}, publish); err != nil {
			t.Fatal(err)
		}
	}
	dst, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Apply(log, int64(len(log))); err != nil {
		t.Fatal(err)
	}
	if g, ok, err := dst.Gone(); err != nil || !ok || g != (Gone{WindowEndNs: 3, SettleNs: math.MinInt64, DedupBucketNs: 5}) {
		t.Fatalf("restored bounds %+v (%v, %v), want the last checkpoint's", g, ok, err)
	}
}
