package engine

import (
	"testing"
)

// TestColdIDsFindsEveryLiveID runs random adds and an advancing expiry
// against a Go map: every id added in a bucket at or after the expiry is
// offered with its bucket (the lookup may offer more buckets, never fewer),
// through rebuilds and stale slots taken over. Ids share their 32-bit hash
// on purpose in part of the run, so that one lookup offers several buckets.
func TestColdIDsFindsEveryLiveID(t *testing.T) {
	rng := seededRand(t, 2)
	var cold coldIDs
	model := make(map[idHash]int64) // id -> bucket start
	expiry := int64(-50) * dedupBucketNs
	var next uint64
	var last idHash
	var added []idHash // in order, so that a seed replays
	id := func() idHash {
		var h idHash
		next++
		h[0], h[1], h[2] = byte(next), byte(next>>8), byte(next>>16)
		h[8] = byte(rng.IntN(256))
		if rng.IntN(10) == 0 { // the same hash as the last id: its halves swapped
			copy(h[:8], last[8:])
			copy(h[8:], last[:8])
		}
		last = h
		return h
	}
	for step := range 300_000 {
		switch op := rng.IntN(100); {
		case op < 50:
			k, b := id(), expiry+int64(rng.IntN(100))*dedupBucketNs
			if rng.IntN(50) == 0 {
				b = int64(rng.IntN(1_800_000_000)-900_000_000) * dedupBucketNs // far in the past or future
			}
			if b < expiry {
				continue
			}
			cold.add(k, b, expiry)
			model[k] = b
			added = append(added, k)
		case op < 98:
			if len(added) == 0 {
				continue
			}
			k := added[rng.IntN(len(added))] // live or expired
			if rng.IntN(4) == 0 {
				k = id() // never added
			}
			want, ok := model[k]
			var offered []int64
			cold.buckets(k, expiry, func(b int64) bool {
				offered = append(offered, b)
				return false
			})
			hit := false
			for _, b := range offered {
				if b < expiry {
					t.Fatalf("step %d: offered bucket %d before the expiry %d", step, b, expiry)
				}
				hit = hit || b == want
			}
			if ok && !hit {
				t.Fatalf("step %d: id %x in bucket %d not offered (offered %v)", step, k, want, offered)
			}
		default:
			expiry += int64(rng.IntN(5)) * dedupBucketNs
			for k, b := range model {
				if b < expiry {
					delete(model, k)
				}
			}
		}
	}
	if cold.len() < len(model) {
		t.Fatalf("%d slots for %d live ids", cold.len(), len(model))
	}
	t.Logf("%d live ids, %d slots in use, %d bytes", len(model), cold.len(), cold.bytes())
}
