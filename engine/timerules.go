package engine

import "github.com/tally-billing/tally/state"

// timeRules are the event-time bounds every shard applies identically.
type timeRules struct {
	graceNs int64
	// latenessNs is the allowed lateness: the watermark trails the latest
	// event time by it (see present).
	latenessNs      int64
	reviseHorizonNs int64
	dedupHorizonNs  int64
	// finalizeAfterNs, when > 0, keeps windows revisable until their
	// billing period is finalized (its end + finalizeAfter); reviseHorizon
	// then only bounds how long they stay in memory.
	finalizeAfterNs int64
	// dedupMemoryNs is how far behind the watermark ids stay in memory;
	// older ones are looked up in the store.
	dedupMemoryNs int64
	// goneEndNs, goneSettleNs and goneBucketNs bound the state that
	// earlier runs' deletions removed (state.Gone, recovered with the
	// watermark; minWatermark: none): a record whose window ends at or
	// before goneEndNs, whose period settles at or before goneSettleNs, or
	// whose dedup bucket starts before goneBucketNs is late, whatever the
	// horizons are now. Without them, a restart with a longer reviseHorizon,
	// finalizeAfter or dedupHorizon would accept such a record against
	// fresh state: a revision 1 again, an allowance given twice, a
	// duplicate not recognised. Within a run they never bind (they trail
	// the run's own bounds).
	goneEndNs, goneSettleNs, goneBucketNs int64
}

// gone returns the deletion bounds of a barrier at wm under these rules,
// raised to at least g: what evict and the checkpoint's range deletes may
// have removed (see writeCheckpoints).
func (r timeRules) gone(wm int64, g state.Gone) state.Gone {
	if wm == minWatermark {
		return g
	}
	if r.finalizeAfterNs == 0 {
		// evict deletes windows and periods once they end (settle)
		// reviseHorizon before wm.
		g.WindowEndNs = max(g.WindowEndNs, wm-r.reviseHorizonNs)
		g.SettleNs = max(g.SettleNs, wm-r.reviseHorizonNs)
	} else {
		// Only the range delete of finalized periods: settled before
		// wm - finalizeAfter.
		g.SettleNs = max(g.SettleNs, wm-r.finalizeAfterNs-1)
	}
	g.DedupBucketNs = max(g.DedupBucketNs, r.dedupExpiry(wm))
	return g
}

// late reports whether a record at tNs, in a window ending at endNs and a
// billing period settling at periodEndNs (see settleEnd), is too late at
// watermark wm: its
// window or period no longer accepts records, or its dedup bucket is
// forgotten, so a duplicate could no longer be recognised. Such records are
// dead-lettered.
func (r timeRules) late(tNs, endNs, periodEndNs, wm int64) bool {
	if wm == minWatermark {
		return false
	}
	if floorDiv(tNs, dedupBucketNs) < r.dedupExpiry(wm) {
		return true
	}
	if endNs <= r.goneEndNs || periodEndNs <= r.goneSettleNs {
		return true // its state may be gone (see goneEndNs)
	}
	if r.finalizeAfterNs > 0 {
		return r.finalized(periodEndNs, wm)
	}
	return endNs+r.reviseHorizonNs <= wm || periodEndNs+r.reviseHorizonNs <= wm
}

// finalized reports whether the billing period settling at periodEndNs is final.
// settledAt reports whether a billing period settling at settleNs took
// no more events at watermark wm: the period rule of late alone, without
// what a restart forgot (goneEndNs), so that a record of the past judged
// with it is judged the same after any restart.
func (r timeRules) settledAt(settleNs, wm int64) bool {
	if wm == minWatermark {
		return false
	}
	if r.finalizeAfterNs > 0 {
		return r.finalized(settleNs, wm)
	}
	return settleNs+r.reviseHorizonNs <= wm
}

func (r timeRules) finalized(periodEndNs, wm int64) bool {
	return wm != minWatermark && periodEndNs+r.finalizeAfterNs <= wm
}

// retentionNs is how long after a billing period settles its windows stay
// in the store: until the period is finalized, or without finalizeAfter for
// reviseHorizon. Past it they may be deleted (one range delete).
func (r timeRules) retentionNs() int64 {
	if r.finalizeAfterNs > 0 {
		return r.finalizeAfterNs
	}
	return r.reviseHorizonNs
}

// hot reports whether something ending at endNs stays in memory at wm.
func (r timeRules) hot(endNs, wm int64) bool {
	return wm == minWatermark || endNs+r.reviseHorizonNs > wm
}

// dedupExpiry is the first dedup bucket still kept at wm; buckets before it
// are forgotten, and records in them are late.
func (r timeRules) dedupExpiry(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return max(floorDiv(wm-r.dedupHorizonNs, dedupBucketNs), r.goneBucketNs)
}

// dedupMemoryExpiry is the first dedup bucket kept in memory; older ones
// are looked up in the store.
func (r timeRules) dedupMemoryExpiry(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return floorDiv(wm-min(r.dedupHorizonNs, r.dedupMemoryNs), dedupBucketNs)
}

// present is the stream's present at wm: the latest event time the
// watermark follows (wm + allowed lateness); minWatermark before any.
func (r timeRules) present(wm int64) int64 {
	if wm == minWatermark {
		return minWatermark
	}
	return wm + r.latenessNs
}

// closed reports whether a window ending at endNs is closed at wm.
func (r timeRules) closed(endNs, wm int64) bool {
	return wm != minWatermark && endNs+r.graceNs <= wm
}
