package engine

import (
	"context"
	"fmt"

	"github.com/tally-billing/tally/state"
)

// State written before windows were charged in the period their start falls
// in, and periods settled at the end of their last window (2026-11-29),
// filed a period and its windows under the period's end. A period whose
// last window runs past its end (a UTC day of a customer in another zone, a
// calendar month with an anchor day other than 1) is now filed under its
// settle end. Recovery re-keys such state as it reads it (settleMigration)
// and writes the new keys in one synced batch at the recovered checkpoint's
// sequence before consuming (commitSettleMigration); a crash before that
// batch redoes it at the next start. Keys that match neither layout are
// left to checkPlacement, which refuses them.

// settleMigration returns the key lead under which a stored window or
// period now belongs, when it was filed under its period's end by the
// earlier layout; p is its placement (ok false: meter not configured).
func settleMigration(key windowName, leadNs int64, p placed, ok bool) (int64, bool) {
	switch {
	case !ok, key.period && p.startNs != key.startNs:
		return 0, false // placed elsewhere: checkPlacement's to refuse
	case leadNs != p.endNs || p.settleNs == p.endNs:
		return 0, false
	}
	return p.settleNs, true
}

// commitSettleMigration writes the re-keyed windows and periods (puts) and
// deletes their old keys, at checkpoint seq.
func (e *Engine) commitSettleMigration(ctx context.Context, seq uint64, puts []state.KV, deletes [][]byte) error {
	if len(puts) == 0 {
		return nil
	}
	if err := e.commit(ctx, &state.Checkpoint{Seq: seq, WindowPuts: puts, WindowDeletes: deletes}); err != nil {
		return fmt.Errorf("engine: migrate %d windows and periods to their settle end: %w", len(puts), err)
	}
	e.log.Info("state migrated: windows and periods filed under their period's settle end", "keys", len(puts))
	return nil
}
