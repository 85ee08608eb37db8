package engine

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// propertyMeters read one event type with every aggregation.
var propertyMeters = []Meter{
	{Name: "total", EventTypes: []string{"usage"}, Aggregation: AggSum, GroupBy: []string{"destination"}, Decimal: true},
	{Name: "events", EventTypes: []string{"usage"}, Aggregation: AggCount},
	{Name: "lowest", EventTypes: []string{"usage"}, Aggregation: AggMin, Decimal: true},
	{Name: "highest", EventTypes: []string{"usage"}, Aggregation: AggMax, Decimal: true},
	{Name: "mean", EventTypes: []string{"usage"}, Aggregation: AggAvg, Decimal: true},
	{Name: "last", EventTypes: []string{"usage"}, Aggregation: AggLatest, Decimal: true},
	{Name: "devices", EventTypes: []string{"usage"}, Aggregation: AggUniqueCount, ValuePath: "dims.device"},
}

type propEvent struct {
	id, customer, destination, device string
	at                                time.Time
	value                             decimal.Decimal
}

func (e propEvent) json() []byte {
	b, _ := json.Marshal(map[string]any{"id": e.id, "customer": e.customer, "meter": "usage",
		"time": e.at.Format(time.RFC3339Nano), "value": json.Number(e.value.String()),
		"dims": map[string]string{"destination": e.destination, "device": e.device}})
	return b
}

// naive recomputes every row from the distinct events, without engine code.
func naive(events []propEvent) map[string]string {
	type acc struct {
		sum, lo, hi, last decimal.Decimal
		lastAt            time.Time
		n                 int64
		devices           map[string]bool
	}
	accs := make(map[string]*acc)
	get := func(key string) *acc {
		a := accs[key]
		if a == nil {
			a = &acc{devices: make(map[string]bool)}
			accs[key] = a
		}
		return a
	}
	for _, e := range events {
		start := e.at.Truncate(time.Minute).Format(time.RFC3339)
		for _, m := range []string{"events", "lowest", "highest", "mean", "last", "devices"} {
			a := get(m + "|" + e.customer + "||" + start)
			if a.n == 0 || e.value.LessThan(a.lo) {
				a.lo = e.value
			}
			if a.n == 0 || e.value.GreaterThan(a.hi) {
				a.hi = e.value
			}
			if a.n == 0 || e.at.After(a.lastAt) {
				a.last, a.lastAt = e.value, e.at
			}
			a.sum = a.sum.Add(e.value)
			a.devices[e.device] = true
			a.n++
		}
		a := get("total|" + e.customer + "|destination=" + e.destination + "|" + start)
		a.sum = a.sum.Add(e.value)
		a.n++
	}
	out := make(map[string]string)
	for key, a := range accs {
		var q decimal.Decimal
		switch meter := key[:strings.IndexByte(key, '|')]; meter {
		case "total":
			q = a.sum
		case "events":
			q = decimal.NewFromInt(a.n)
		case "lowest":
			q = a.lo
		case "highest":
			q = a.hi
		case "mean":
			q = a.sum.DivRound(decimal.NewFromInt(a.n), 10)
		case "last":
			q = a.last
		case "devices":
			q = decimal.NewFromInt(int64(len(a.devices)))
		}
		out[key] = fmt.Sprintf("quantity=%s count=%d amount=%s", q, a.n, q.Mul(decimal.RequireFromString("0.5")).Round(6))
	}
	return out
}

// TestPropertyExactUnderShufflesDuplicatesAndCrashes: for random streams,
// shuffled within the allowed lateness, with random duplicates and random
// crashes, the highest revision of every row equals a naive recomputation
// from the distinct input.
func TestPropertyExactUnderShufflesDuplicatesAndCrashes(t *testing.T) {
	for seed := range 12 {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runProperty(t, uint64(seed), propertyMode{}) })
	}
}

// TestPropertyExactUnderMemoryBudget: with a budget of a few windows, closed
// windows spill to the store and records minutes late read them back.
func TestPropertyExactUnderMemoryBudget(t *testing.T) {
	for seed := range 8 {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runProperty(t, uint64(seed)+200, propertyMode{budget: 20, lateRecords: true})
		})
	}
}

type propertyMode struct {
	finalize    bool // finalizeAfter with a one-minute memory horizon
	budget      int  // maxLiveWindows
	lateRecords bool // a share of records minutes late
	// changelog: checkpoints go to a changelog whose appends fail at
	// random (before or after the commit landed), and half the crashes
	// lose the state folder, restored from the changelog alone.
	changelog bool
}

// TestPropertyExactWithAFailingChangelog: a task's checkpoints go to its
// changelog first. Appends fail at random, some after their commit landed,
// so that the retried checkpoint is in the changelog twice; crashes keep
// or lose the state folder. The rows stay exact.
func TestPropertyExactWithAFailingChangelog(t *testing.T) {
	for seed := range 8 {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runProperty(t, uint64(seed)+300, propertyMode{changelog: true, lateRecords: true, finalize: seed%2 == 0})
		})
	}
}

// TestPropertyExactWithFinalizationAndColdState: the same with finalizeAfter,
// a one-minute memory horizon and a share of records arriving minutes late,
// so that windows and ids are read back from the store.
func TestPropertyExactWithFinalizationAndColdState(t *testing.T) {
	for seed := range 12 {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			runProperty(t, uint64(seed)+100, propertyMode{finalize: true, lateRecords: true})
		})
	}
}

func runProperty(t *testing.T, seed uint64, mode propertyMode) {
	rng := rand.New(rand.NewPCG(seed, 99))
	const lateness = 30 * time.Second
	partitions := 1 + rng.IntN(4)
	h := newHarness(t, partitions)
	h.cfg.AllowedLateness = lateness
	h.cfg.Shards = 1 + rng.IntN(3)
	h.cfg.MaxLiveWindows = mode.budget
	if mode.finalize {
		h.cfg.ReviseHorizon = time.Minute
		h.cfg.FinalizeAfter = 720 * time.Hour
		h.cfg.DedupHorizon = 720 * time.Hour
	}
	meters, err := CompileMeters(propertyMeters, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.meters = meters
	if mode.changelog {
		h.changelog = &memChangelog{rng: rand.New(rand.NewPCG(seed, 7))}
	}
	h.start()

	n := 500 + rng.IntN(1500)
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	type delivery struct {
		key   time.Time // arrival order
		event propEvent
	}
	var events []propEvent
	var arrivals []delivery
	for i := range n {
		e := propEvent{
			id:          fmt.Sprint("e", i),
			customer:    fmt.Sprint("c", rng.IntN(12)),
			destination: []string{"uk", "fr", "us"}[rng.IntN(3)],
			device:      fmt.Sprint("d", rng.IntN(6)),
			// Distinct times: LATEST has a single answer.
			at:    base.Add(time.Duration(i)*150*time.Millisecond + time.Duration(rng.IntN(1000))*time.Microsecond),
			value: decimal.New(int64(rng.IntN(20000)-2000), -2),
		}
		events = append(events, e)
		// Arrive up to lateness/2 after the event time; a duplicate
		// (producer retry) arrives a little later still.
		delay := func() time.Duration {
			if mode.lateRecords && rng.IntN(7) == 0 {
				return time.Duration(rng.Int64N(int64(6 * time.Minute))) // late: read back from the store
			}
			return time.Duration(rng.Int64N(int64(lateness / 2)))
		}
		arrivals = append(arrivals, delivery{e.at.Add(delay()), e})
		if rng.IntN(20) == 0 {
			arrivals = append(arrivals, delivery{e.at.Add(delay()), e})
		}
	}
	sort.SliceStable(arrivals, func(i, j int) bool { return arrivals[i].key.Before(arrivals[j].key) })

	crashes := 0
	for start := 0; start < len(arrivals); {
		end := min(start+1+rng.IntN(200), len(arrivals))
		for _, a := range arrivals[start:end] {
			// A customer's records may land in any partition.
			h.src.append(rng.IntN(partitions), a.event.json())
		}
		start = end
		switch rng.IntN(4) {
		case 0:
			h.checkpoint(rng.IntN(2) == 0)
		case 1:
			if mode.changelog && rng.IntN(2) == 0 {
				h.loseDisk()
			} else {
				h.crash()
			}
			crashes++
		}
		h.fresh()
	}
	// Shutdown stops reading at once: first let the engine read
	// everything, then stop (which emits the open windows).
	h.checkpoint(false)
	coldReads, spilled := h.engine.stats.coldReads.Load(), h.engine.stats.spilled.Load()
	h.stop()
	h.fresh()

	got := make(map[string]string)
	for _, r := range h.final() {
		key := fmt.Sprintf("%s|%s|%s|%s", r.Meter, r.Customer, r.GroupKey, r.WindowStart.Format(time.RFC3339))
		got[key] = fmt.Sprintf("quantity=%s count=%d amount=%s", r.Quantity, r.Count, r.Amount)
	}
	want := naive(events)
	mismatches := 0
	for key, w := range want {
		if got[key] != w {
			mismatches++
			if mismatches <= 5 {
				t.Errorf("%s: got %q, want %q", key, got[key], w)
			}
		}
	}
	for key := range got {
		if _, ok := want[key]; !ok {
			t.Errorf("unexpected row %s", key)
		}
	}
	h.sink.mu.Lock()
	if len(h.sink.letters) > 0 {
		t.Errorf("%d dead letters in a stream without late or bad records, first: %+v", len(h.sink.letters), h.sink.letters[0])
	}
	h.sink.mu.Unlock()
	if mismatches > 0 {
		t.Fatalf("%d of %d rows differ (%d events, %d arrivals, %d partitions, %d crashes)", mismatches, len(want), n, len(arrivals), partitions, crashes)
	}
	if mode.budget > 0 && spilled == 0 && crashes == 0 {
		t.Errorf("nothing spilled under a budget of %d windows", mode.budget)
	}
	if mode.lateRecords && coldReads == 0 && crashes == 0 {
		t.Errorf("no window or id was read back from the store: the test missed the cold path")
	}
	if mode.changelog {
		if h.changelog.lost == 0 || h.changelog.landed == 0 {
			t.Errorf("the changelog failed %d times before and %d times after a commit: the test missed a case", h.changelog.lost, h.changelog.landed)
		}
		t.Logf("changelog appends failed %d times before and %d times after the commit landed", h.changelog.lost, h.changelog.landed)
	}
	t.Logf("%d events, %d arrivals, %d partitions, %d crashes, %d rows, %d store reads, %d spilled (last run): exact", n, len(arrivals), partitions, crashes, len(want), coldReads, spilled)
}
