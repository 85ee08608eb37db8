package engine

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// bandRater prices every event per event at its value, at a rate named
// after the quarter hour of its window ("q-<n>"), so that rates come and
// go like customers and groups. Its breakdown line names the rate the
// engine handed back.
type bandRater struct{ unitRater }

func bandOf(windowStart time.Time) string { return fmt.Sprintf("q-%d", windowStart.Unix()/900) }

func (bandRater) RateEvent(_ rating.Subscriber, _ string, windowStart time.Time, u rating.Usage) (rating.EventRating, error) {
	return rating.EventRating{PerEvent: true, Amount: u.Units(), Rate: bandOf(windowStart)}, nil
}

func (bandRater) IncrementEvents(_ rating.Subscriber, _ string, _ time.Time, usage rating.WindowUsage, before, after decimal.Decimal) (rating.Charge, error) {
	return rating.Charge{Amount: after.Sub(before), Currency: "EUR", Lines: []rating.Line{{Description: "rate " + usage.Rate}}}, nil
}

// TestNamesFollowTheWindowTable churns customers, groups and rates
// through a shard for hours of event time, so that windows leave memory
// and their ids are freed and given to new names, and checks at every
// barrier that each row names the customer, group and rate of the records
// it counts (an oracle keyed by the records' own strings) and that every
// id is held exactly by the windows in the table.
func TestNamesFollowTheWindowTable(t *testing.T) {
	rng := seededRand(t, 0)
	s := testShard()
	s.rater = bandRater{}
	type wkey struct {
		customer, group string
		startNs         int64
	}
	want := map[wkey]int64{}
	peak := 0
	spelled := map[uint32][]string{} // the customers each id numbered
	// The run crosses a month's end, so that the first billing period's
	// aggregates leave memory too, and customer ids are reused.
	start := time.Date(2026, 3, 31, 22, 0, 0, 0, time.UTC)
	const minutes = 240
	for m := range minutes {
		at := start.Add(time.Duration(m) * time.Minute)
		for i := range 40 {
			// Customers and groups drift: a name lives about 20 minutes.
			customer := fmt.Sprintf("c-%d", m/20*10+rng.IntN(10))
			g := fmt.Sprint((m/7)*3 + rng.IntN(3))
			ev := event(fmt.Sprintf("e-%d-%d", m, i), customer, at.Add(time.Duration(i)*time.Second), int64(1+rng.IntN(9)), "g="+g)
			ev.Dims = []Dim{{Key: "g", Value: g}}
			s.apply(&ev)
			want[wkey{customer, "g=" + g + ",rate=" + bandOf(at), at.UnixNano()}] += ev.value.IntPart()
		}
		peak = max(peak, s.names.len()) // the most numbered at once: just before a sweep
		snap := cut(s, at.Add(30*time.Second), false)
		if snap.err != nil {
			t.Fatal(snap.err)
		}
		for _, r := range rowsOf(t, snap) {
			k := wkey{r.Customer, r.GroupKey, r.WindowStart.UnixNano()}
			if q := r.Quantity.IntPart(); q != want[k] {
				t.Fatalf("minute %d: row %s/%s/%s has %d, the records of that window sum to %d",
					m, r.Customer, r.GroupKey, r.WindowStart.Format(time.TimeOnly), q, want[k])
			}
			if len(r.Breakdown) != 1 || r.Breakdown[0].Description != "rate "+bandOf(r.WindowStart) {
				t.Fatalf("minute %d: row %s/%s/%s explains itself as %+v, want rate %s",
					m, r.Customer, r.GroupKey, r.WindowStart.Format(time.TimeOnly), r.Breakdown, bandOf(r.WindowStart))
			}
		}
		checkNames(t, s)
		for w := range s.windows {
			if c := s.names.str(w.customer); !slices.Contains(spelled[w.customer], c) {
				spelled[w.customer] = append(spelled[w.customer], c)
			}
		}
	}
	reused := 0
	for _, cs := range spelled {
		if len(cs) > 1 {
			reused++
		}
	}
	if reused == 0 {
		t.Error("no customer id was freed and given to another customer: the test does not test reuse")
	}
	// Past the revision horizon of the billing period every window and
	// period leaves, and every name with it.
	cut(s, start.AddDate(0, 2, 0), false)
	checkNames(t, s)
	if n := s.names.len(); n != 0 || len(s.windows)+len(s.periods) != 0 {
		t.Errorf("%d names numbered with %d windows and periods in memory, want none", n, len(s.windows)+len(s.periods))
	}
	if len(s.names.strs) > peak+1 {
		t.Errorf("%d ids handed out for at most %d names at once: freed ids are not reused", len(s.names.strs)-1, peak)
	}
}

// checkNames checks the names invariant: every id numbered is held by as
// many windows and periods in the window table as name it, and names the
// string it is numbered for.
func checkNames(t *testing.T, s *shard) {
	t.Helper()
	refs := map[uint32]uint32{}
	count := func(w *window) {
		refs[w.key.customer]++
		refs[w.key.group]++
		refs[w.rate]++
	}
	for _, w := range s.windows {
		count(w)
	}
	for _, p := range s.periods {
		count(p)
	}
	for str, id := range s.names.ids {
		if s.names.strs[id] != str {
			t.Fatalf("id %d numbers %q but spells %q", id, str, s.names.strs[id])
		}
		if id != 0 && s.names.refs[id] != refs[id] {
			t.Fatalf("id %d (%q) has %d references, %d windows and periods name it", id, str, s.names.refs[id], refs[id])
		}
		if id != 0 && refs[id] == 0 {
			t.Fatalf("id %d (%q) is numbered after a barrier with no window naming it", id, str)
		}
	}
	for id := range refs {
		if id != 0 && s.names.strs[id] == "" {
			t.Fatalf("a window names id %d, which is freed", id)
		}
	}
}
