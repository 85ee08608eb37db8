package state

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestAcknowledgedCheckpointsSurvivePowerLoss commits checkpoints on
// Pebble's crashable in-memory file system and cuts the power after a
// random number of them: the file system after the crash (CrashClone) keeps
// what was synced and, at random, some of what was not. Every checkpoint
// Commit acknowledged must be there after the reopen, whole. It fails when
// Commit's pebble.Sync becomes pebble.NoSync.
func TestAcknowledgedCheckpointsSurvivePowerLoss(t *testing.T) {
	seed := rand.Uint64()
	if v := os.Getenv("TALLY_DURABILITY_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (replay with TALLY_DURABILITY_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	fs := vfs.NewCrashableMem()
	const dir = "state"
	var acknowledged uint64
	for round := range 5 {
		s, err := openFS(dir, fs)
		if err != nil {
			t.Fatalf("round %d: reopen after power loss: %v", round, err)
		}
		// Everything acknowledged before the power loss is there.
		if seq, err := s.LastSeq(); err != nil || seq != acknowledged {
			t.Fatalf("round %d (seed %d): last checkpoint %d after power loss, %d was acknowledged (%v)", round, seed, seq, acknowledged, err)
		}
		checkCheckpoint(t, s, acknowledged, seed)

		for range 1 + rng.IntN(20) {
			acknowledged++
			if err := s.Commit(testCheckpoint(acknowledged)); err != nil {
				t.Fatal(err)
			}
		}
		// Power loss: the file system after it keeps what was synced and
		// some of the rest (none, then half, then all of it).
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: (round % 3) * 50, RNG: rand.New(rand.NewPCG(rng.Uint64(), 1))})
		s.Close()
		fs = crashed
	}
}

// testCheckpoint is checkpoint seq's content: its offset and one window
// whose value names the checkpoint.
func testCheckpoint(seq uint64) *Checkpoint {
	return &Checkpoint{
		Seq:          seq,
		WatermarkNs:  int64(seq) * 1e9,
		HasWatermark: true,
		Partitions:   []PartitionProgress{{Topic: "usage", Partition: 0, NextOffset: int64(seq) * 100, MaxEventTimeNs: int64(seq) * 1e9}},
		WindowPuts:   []KV{{Key: fmt.Appendf(nil, "w%03d", seq%7), Value: fmt.Appendf(nil, "checkpoint %d", seq)}},
	}
}

// checkCheckpoint asserts that the store holds exactly checkpoint seq's
// offsets, watermark and windows.
func checkCheckpoint(t *testing.T, s *Store, seq, seed uint64) {
	t.Helper()
	if seq == 0 {
		return
	}
	parts, err := s.Partitions()
	if err != nil || len(parts) != 1 || parts[0].NextOffset != int64(seq)*100 {
		t.Fatalf("seed %d: offsets %+v after checkpoint %d (%v)", seed, parts, seq, err)
	}
	if wm, ok, err := s.Watermark(); err != nil || !ok || wm != int64(seq)*1e9 {
		t.Fatalf("seed %d: watermark %d after checkpoint %d (%v)", seed, wm, seq, err)
	}
	v, ok, err := s.Window(fmt.Appendf(nil, "w%03d", seq%7))
	if err != nil || !ok || string(v) != fmt.Sprintf("checkpoint %d", seq) {
		t.Fatalf("seed %d: window of checkpoint %d reads %q (%v)", seed, seq, v, err)
	}
}
