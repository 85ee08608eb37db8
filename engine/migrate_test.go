package engine

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestStateBeforeSettleEndMigrates starts on state written before periods
// settled at the end of their last window (testdata/state/before-settle-end:
// a New York customer's UTC DAY window of March 10th, filed under March's
// end, April 1st 04:00Z, where it now belongs under April 2nd 00:00Z, the
// end of the last UTC day starting in March). The engine must not refuse
// it as a changed configuration, and must find the stored window and period
// again: a second record of March 10th makes the window 2, not a new 1.
func TestStateBeforeSettleEndMigrates(t *testing.T) {
	h := newHarness(t, 1)
	copyDir(t, "../testdata/state/before-settle-end", h.dir)
	h.cfg.Customers = []Customer{{ID: "ny", Timezone: "America/New_York", BillingAnchorDay: 1}}
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggSum, Window: "DAY"}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.meters = meters
	// The record the old run read, at offset 0 (the state resumes at 1).
	h.src.append(0, []byte(`{"id":"1","customer":"ny","meter":"sms","time":"2026-03-10T10:00:00Z","value":1}`))
	h.start()
	defer h.cancel()
	h.src.append(0, []byte(`{"id":"2","customer":"ny","meter":"sms","time":"2026-03-10T14:00:00Z","value":1}`),
		[]byte(`{"id":"3","customer":"ny","meter":"sms","time":"2026-04-01T02:00:00Z","value":1}`))
	h.checkpoint(false)
	h.crash() // the migrated keys are durable: a second start reads them as they are
	h.src.append(0, []byte(`{"id":"4","customer":"ny","meter":"sms","time":"2026-04-03T00:00:00Z","value":1}`))
	h.checkpoint(false)
	got := make(map[string]int64)
	for _, r := range h.final() {
		got[r.WindowStart.Format("01-02")] = r.Quantity.IntPart()
	}
	if got["03-10"] != 2 || got["04-01"] != 1 {
		t.Fatalf("windows after the migration: %v; want March 10th 2 and April 1st 1", got)
	}
	for _, l := range h.sink.letters {
		t.Errorf("dead letter %s: %s", l.Reason, l.Detail)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
