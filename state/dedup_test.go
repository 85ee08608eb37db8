package state

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestDedupPackedLookups stores ids over several checkpoints and buckets,
// including hashes that begin or end with 0xff (the edges of a value's key
// range), and checks every stored id is found in its bucket only, absent
// ids are not, recovery lists each once, and expiry removes whole buckets.
func TestDedupPackedLookups(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	randomID := func() (id [16]byte) {
		for i := range id {
			id[i] = byte(rng.UintN(256))
		}
		return id
	}
	edge := [][16]byte{{0xff, 0xff}, {0x00}, {0xff, 15: 0xff}, {0x7f, 1}}
	stored := map[[16]byte]int64{}
	var routing = map[[16]byte]uint64{}
	for seq := uint64(1); seq <= 5; seq++ {
		var adds []DedupEntry
		for i := range 2000 {
			id := randomID()
			if i < len(edge) && seq == 3 {
				id = edge[i]
			}
			bucket := int64(seq%3) * 10e9
			stored[id], routing[id] = bucket, rng.Uint64()
			adds = append(adds, DedupEntry{BucketNs: bucket, IDHash: id, RoutingHash: routing[id]})
		}
		if err := s.Commit(&Checkpoint{Seq: seq, DedupAdds: adds}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(s *Store, want map[[16]byte]int64) {
		t.Helper()
		for id, bucket := range want {
			if ok, err := s.HasDedup(bucket, id); err != nil || !ok {
				t.Fatalf("HasDedup(%d, %x) = %v, %v; want true", bucket, id, ok, err)
			}
			if ok, err := s.HasDedup(bucket+10e9*7, id); err != nil || ok {
				t.Fatalf("HasDedup of %x in a bucket it is not in = %v, %v", id, ok, err)
			}
		}
		for range 2000 {
			id := randomID()
			if _, ok := want[id]; ok {
				continue
			}
			if ok, err := s.HasDedup(10e9, id); err != nil || ok {
				t.Fatalf("HasDedup(absent %x) = %v, %v", id, ok, err)
			}
		}
		seen := map[[16]byte]bool{}
		err := s.Dedup(func(e DedupEntry) error {
			if seen[e.IDHash] {
				t.Errorf("Dedup lists %x twice", e.IDHash)
			}
			seen[e.IDHash] = true
			if b, ok := want[e.IDHash]; !ok || b != e.BucketNs || routing[e.IDHash] != e.RoutingHash {
				t.Errorf("Dedup lists %+v; want bucket %d routing %d (stored %v)", e, b, routing[e.IDHash], ok)
			}
			return nil
		})
		if err != nil || len(seen) != len(want) {
			t.Fatalf("Dedup listed %d ids (%v); want %d", len(seen), err, len(want))
		}
	}
	check(s, stored)
	if err := s.Commit(&Checkpoint{Seq: 6, DedupExpireBeforeNs: 10e9}); err != nil {
		t.Fatal(err)
	}
	kept := map[[16]byte]int64{}
	for id, b := range stored {
		if b >= 10e9 {
			kept[id] = b
		}
	}
	if len(kept) == len(stored) || len(kept) == 0 {
		t.Fatalf("expiry test needs ids on both sides: kept %d of %d", len(kept), len(stored))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s, kept)
}

// TestDedupMigratesOneKeyPerID opens a store whose dedup ids are in the
// layout of earlier versions (one d/ key per id) and checks they are moved
// to the packed layout: found by HasDedup and Dedup, old keys gone.
func TestDedupMigratesOneKeyPerID(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old := []DedupEntry{{BucketNs: 10e9, IDHash: [16]byte{1}, RoutingHash: 7}, {BucketNs: 10e9, IDHash: [16]byte{0xff, 2}, RoutingHash: 8},
		{BucketNs: 20e9, IDHash: [16]byte{3}, RoutingHash: 9}}
	for _, e := range old {
		k := binary.BigEndian.AppendUint64(append([]byte(nil), prefixDedupV1...), uint64(e.BucketNs))
		if err := s.db.Set(append(k, e.IDHash[:]...), binary.BigEndian.AppendUint64(nil, e.RoutingHash), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var got []DedupEntry
	if err := s.Dedup(func(e DedupEntry) error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(old) {
		t.Fatalf("after migration Dedup lists %+v; want %+v", got, old)
	}
	for _, e := range old {
		if ok, err := s.HasDedup(e.BucketNs, e.IDHash); err != nil || !ok {
			t.Errorf("HasDedup(%+v) after migration = %v, %v", e, ok, err)
		}
	}
	left := 0
	if err := s.scan(prefixDedupV1, func(k, v []byte) error { left++; return nil }); err != nil || left != 0 {
		t.Errorf("%d old dedup keys left after migration (%v)", left, err)
	}
}

// TestDedupMigrationStreams migrates 20K old-layout ids over many buckets
// in batches of about 4 KB (so that groups end and batches turn over at
// every kind of boundary) and checks every id arrives once.
func TestDedupMigrationStreams(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	want := map[[16]byte]DedupEntry{}
	for range 20_000 {
		var e DedupEntry
		e.BucketNs = int64(rng.IntN(7)) * 10e9
		for i := range e.IDHash {
			e.IDHash[i] = byte(rng.UintN(256))
		}
		e.RoutingHash = rng.Uint64()
		want[e.IDHash] = e
		k := binary.BigEndian.AppendUint64(append([]byte(nil), prefixDedupV1...), uint64(e.BucketNs))
		if err := s.db.Set(append(k, e.IDHash[:]...), binary.BigEndian.AppendUint64(nil, e.RoutingHash), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.migrateDedup(4096); err != nil {
		t.Fatal(err)
	}
	for _, e := range want {
		if ok, err := s.HasDedup(e.BucketNs, e.IDHash); err != nil || !ok {
			t.Fatalf("HasDedup(%+v) after migration = %v, %v", e, ok, err)
		}
	}
	got := 0
	err = s.Dedup(func(e DedupEntry) error {
		if w, ok := want[e.IDHash]; !ok || w != e {
			t.Fatalf("migrated %+v; want %+v (%v)", e, w, ok)
		}
		delete(want, e.IDHash)
		got++
		return nil
	})
	if err != nil || len(want) != 0 {
		t.Fatalf("Dedup: %v; %d ids listed, %d missing", err, got, len(want))
	}
	left := 0
	if err := s.scan(prefixDedupV1, func(k, v []byte) error { left++; return nil }); err != nil || left != 0 {
		t.Errorf("%d old dedup keys left after migration (%v)", left, err)
	}
}
