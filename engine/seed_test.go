package engine

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"
)

// seededRand returns a random source for a randomized test, seeded from
// TALLY_SEED when set (to replay a run) and from the clock otherwise; the
// seed is logged either way. stream tells tests apart under one seed.
func seededRand(t *testing.T, stream uint64) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TALLY_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("TALLY_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with TALLY_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, stream))
}
