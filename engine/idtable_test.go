package engine

import (
	"hash/fnv"
	"testing"
)

// TestEventIDHashIsFNV128a: the ids in existing state were hashed with
// hash/fnv; the allocation-free hash must give the same bytes.
func TestEventIDHashIsFNV128a(t *testing.T) {
	for _, c := range [][3]string{{"", "", ""}, {"src", "e1", "sms"}, {"crm", "ü-1234567890", "voice_seconds"}, {"a\x00b", "\xff", "m"}} {
		h := fnv.New128a()
		h.Write([]byte(c[0]))
		h.Write([]byte{0})
		h.Write([]byte(c[1]))
		h.Write([]byte{0})
		h.Write([]byte(c[2]))
		var want idHash
		h.Sum(want[:0])
		if got := eventIDHash(c[0], c[1], c[2]); got != want {
			t.Errorf("eventIDHash%q = %x, hash/fnv %x", c, got, want)
		}
	}
}

// TestIDTableAgreesWithMap runs random sets, gets and bucket deletions
// against a Go map.
func TestIDTableAgreesWithMap(t *testing.T) {
	rng := seededRand(t, 1)
	var table idTable
	model := make(map[idHash]int64)
	id := func() idHash {
		var h idHash
		h[0], h[9] = byte(rng.IntN(64)), byte(rng.IntN(64)) // few distinct ids: many updates
		h[15] = byte(rng.IntN(4))
		return h
	}
	for step := range 200_000 {
		switch op := rng.IntN(100); {
		case op < 60:
			k, b := id(), int64(rng.IntN(20))
			table.set(k, b)
			model[k] = b
		case op < 99:
			k := id()
			got, ok := table.get(k)
			want, wantOK := model[k]
			if ok != wantOK || got != want {
				t.Fatalf("step %d: get(%x) = %d %v, want %d %v", step, k, got, ok, want, wantOK)
			}
		default:
			cut := int64(rng.IntN(20))
			table.deleteIf(func(_ idHash, b int64) bool { return b < cut })
			for k, b := range model {
				if b < cut {
					delete(model, k)
				}
			}
		}
		if table.len() != len(model) {
			t.Fatalf("step %d: %d ids, want %d", step, table.len(), len(model))
		}
	}
}
