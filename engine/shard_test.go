package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// unitRater charges 0.5 per unit, in EUR.
type unitRater struct{}

func (unitRater) RateEvent(rating.Subscriber, string, time.Time, rating.Usage) (rating.EventRating, error) {
	return rating.EventRating{}, nil
}

func (unitRater) Currency(rating.Subscriber, string, time.Time) (string, bool) { return "EUR", true }

func (unitRater) IncrementEvents(rating.Subscriber, string, time.Time, rating.WindowUsage, decimal.Decimal, decimal.Decimal) (rating.Charge, error) {
	return rating.Charge{}, fmt.Errorf("unitRater prices no meter per event")
}

func (unitRater) PeriodFee(rating.Subscriber, string, time.Time, time.Time, decimal.Decimal) (rating.Charge, bool, error) {
	return rating.Charge{}, false, nil
}

func (unitRater) Increment(_ rating.Subscriber, _ string, _ time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	price := decimal.RequireFromString("0.5")
	return rating.Charge{Amount: after.Sub(before).Mul(price), Currency: "EUR", UnitPrice: price}, nil
}

var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

var shardMeters, _ = CompileMeters([]Meter{{Name: "sms", GroupBy: []string{"*"}}}, time.Minute)

func testShard() *shard {
	rules := timeRules{graceNs: int64(10 * time.Second), reviseHorizonNs: int64(time.Hour), dedupHorizonNs: int64(time.Hour)}
	utc, _ := newCustomers(nil, "UTC", 1)
	return newShard(0, "t", rules, shardMeters, utc, unitRater{}, noStore{}, 1)
}

func event(id, customer string, at time.Time, value int64, group string) Event {
	return Event{ID: id, Customer: customer, Meter: "sms", TimeNs: at.UnixNano(), value: decimal.NewFromInt(value),
		GroupKey: group, meter: shardMeters.list[0]}
}

func cut(s *shard, wm time.Time, emitOpen bool) *shardSnapshot {
	return s.snapshot(&barrier{watermarkNs: wm.UnixNano(), emitOpen: emitOpen})
}

func rowsByKey(rows []RatedRow) map[string]RatedRow {
	out := make(map[string]RatedRow)
	for _, r := range rows {
		out[r.Customer+"|"+r.GroupKey+"|"+r.WindowStart.Format("15:04")] = r
	}
	return out
}

func TestShardSumsCountsAndClosesWindows(t *testing.T) {
	s := testShard()
	s.watermarkNs = t0.UnixNano()
	for _, e := range []Event{
		event("1", "a", t0.Add(1*time.Second), 3, ""),
		event("2", "a", t0.Add(59*time.Second), 4, ""),
		event("3", "a", t0.Add(60*time.Second), 5, ""), // next window
		event("4", "b", t0.Add(2*time.Second), 7, "destination=uk"),
		event("5", "b", t0.Add(3*time.Second), 1, "destination=fr"),
	} {
		s.apply(&e)
	}
	// Watermark before end+grace of the first window: nothing final yet.
	if snap := cut(s, t0.Add(69*time.Second), false); len(rowsOf(t, snap)) != 0 {
		t.Fatalf("emitted %d rows before the window closed", len(rowsOf(t, snap)))
	}
	snap := cut(s, t0.Add(70*time.Second), false)
	rows := rowsByKey(rowsOf(t, snap))
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want 3 (the 10:01 window is open): %v", len(rows), rows)
	}
	a := rows["a||10:00"]
	if a.Quantity.String() != "7" || a.Count != 2 || a.Amount.String() != "3.5" || !a.Final || a.Revision != 1 {
		t.Errorf("row a = %+v, want quantity 7, count 2, amount 3.5, final, revision 1", a)
	}
	if got := rows["b|destination=uk|10:00"].Quantity.String(); got != "7" {
		t.Errorf("b/uk quantity %s, want 7", got)
	}
	if got := rows["b|destination=fr|10:00"].Quantity.String(); got != "1" {
		t.Errorf("b/fr quantity %s, want 1", got)
	}
	if snap.deltaEntries != 5 || len(snap.windowPuts) != 0 {
		t.Errorf("%d delta entries and %d merges, want the 3 emitted windows and the 2 billing periods they charged (all were written at the previous barrier), none merged (all stay in memory)",
			snap.deltaEntries, len(snap.windowPuts))
	}
	// Nothing changed: the next barrier emits and writes nothing.
	if snap := cut(s, t0.Add(71*time.Second), false); len(rowsOf(t, snap)) != 0 || snap.deltaEntries != 0 {
		t.Errorf("idle barrier emitted %d rows and %d entries", len(rowsOf(t, snap)), snap.deltaEntries)
	}
}

func TestShardRevisesLateRecordsAndDeadLettersAfterHorizon(t *testing.T) {
	s := testShard()
	e1 := event("1", "a", t0.Add(time.Second), 2, "")
	s.apply(&e1)
	cut(s, t0.Add(2*time.Minute), false) // emits revision 1

	s.watermarkNs = t0.Add(2 * time.Minute).UnixNano()
	late := event("2", "a", t0.Add(30*time.Second), 5, "")
	s.apply(&late)
	snap := cut(s, t0.Add(2*time.Minute), false)
	if len(rowsOf(t, snap)) != 1 || rowsOf(t, snap)[0].Revision != 2 || rowsOf(t, snap)[0].Quantity.String() != "7" || rowsOf(t, snap)[0].Count != 2 {
		t.Fatalf("late record: rows %+v, want revision 2 with full totals 7/2", rowsOf(t, snap))
	}
	if got := snap.revenue["EUR"].String(); got != "2.5" {
		t.Errorf("revenue delta of the revision %s, want 2.5 (3.5 - 1)", got)
	}

	// Past the horizon the window is evicted and a record for it is late.
	snap = cut(s, t0.Add(time.Minute+time.Hour), false)
	if len(snap.windowDeletes) != 1 || len(s.windows) != 0 {
		t.Fatalf("window not evicted past the horizon: deletes %d, live %d", len(snap.windowDeletes), len(s.windows))
	}
	s.watermarkNs = t0.Add(time.Minute + time.Hour).UnixNano()
	tooLate := event("3", "a", t0.Add(40*time.Second), 1, "")
	tooLate.Raw = []byte("raw")
	s.apply(&tooLate)
	snap = cut(s, t0.Add(time.Minute+time.Hour), false)
	if len(snap.deadLetters) != 1 || snap.deadLetters[0].Reason != ReasonLate || string(snap.deadLetters[0].Raw) != "raw" {
		t.Fatalf("dead letters %+v, want one late letter with the raw record", snap.deadLetters)
	}
	if len(rowsOf(t, snap)) != 0 {
		t.Errorf("a late record produced rows: %+v", rowsOf(t, snap))
	}
}

func TestShardEmitsProvisionalRevisions(t *testing.T) {
	s := testShard()
	e1 := event("1", "a", t0, 1, "")
	s.apply(&e1)
	snap := cut(s, t0, true)
	if len(rowsOf(t, snap)) != 1 || rowsOf(t, snap)[0].Final || rowsOf(t, snap)[0].Revision != 1 {
		t.Fatalf("rows %+v, want one provisional revision 1", rowsOf(t, snap))
	}
	e2 := event("2", "a", t0.Add(time.Second), 1, "")
	s.apply(&e2)
	snap = cut(s, t0.Add(80*time.Second), false)
	if len(rowsOf(t, snap)) != 1 || !rowsOf(t, snap)[0].Final || rowsOf(t, snap)[0].Revision != 2 || rowsOf(t, snap)[0].Quantity.String() != "2" {
		t.Fatalf("rows %+v, want final revision 2 with quantity 2", rowsOf(t, snap))
	}
}

func TestShardRemovesDuplicates(t *testing.T) {
	s := testShard()
	for _, e := range []Event{
		event("1", "a", t0, 1, ""),
		event("1", "a", t0, 1, ""), // producer retry
		{ID: "1", Source: "other", Customer: "a", Meter: "sms", TimeNs: t0.UnixNano(), value: decimal.NewFromInt(1), meter: shardMeters.list[0]},
	} {
		s.apply(&e)
	}
	snap := cut(s, t0.Add(2*time.Minute), false)
	if snap.duplicates["sms"] != 1 {
		t.Errorf("duplicates %v, want 1 for sms", snap.duplicates)
	}
	if len(rowsOf(t, snap)) != 1 || rowsOf(t, snap)[0].Quantity.String() != "2" {
		t.Errorf("rows %+v, want quantity 2 (same id from another source is another event)", rowsOf(t, snap))
	}
	if len(snap.dedupAdds) != 2 {
		t.Errorf("%d dedup entries to persist, want 2", len(snap.dedupAdds))
	}
}

func TestWindowEncodingRoundTrip(t *testing.T) {
	key := windowName{meter: "voice_seconds", customer: "sub-1", groupKey: `a\=b=x`, startNs: t0.UnixNano()}
	got, periodEnd, err := decodeWindowKey(encodeWindowKey(key, 42))
	if err != nil || got != key || periodEnd != 42 {
		t.Fatalf("key round trip: %+v, %d, %v; want %+v, 42", got, periodEnd, err, key)
	}
	w := &window{count: 12, revision: 3, changed: true, perEvent: true}
	w.set(numSum, decimal.RequireFromString("123.4500000001"))
	w.set(numEmittedAmount, decimal.RequireFromString("-0.5"))
	w.set(numMoney, decimal.RequireFromString("7.25"))
	w.set(numEmittedMoney, decimal.RequireFromString("3"))
	encoded, err := encodeWindowValue(w, key.groupKey)
	if err != nil {
		t.Fatal(err)
	}
	var back window
	if _, err := decodeWindowValue(encoded, key, &back); err != nil {
		t.Fatal(err)
	}
	if back.count != w.count || back.nums != w.nums || back.revision != w.revision || back.changed != w.changed || !back.perEvent {
		t.Errorf("value round trip: %+v, want %+v", back, w)
	}
	// The rate is read back from the group key, where the engine put it;
	// a customer's own dimension "rate" there is flagged and not taken.
	rated := windowName{meter: "calls", customer: "sub-1", groupKey: `destination=uk,rate=peak`, startNs: t0.UnixNano()}
	for _, c := range []struct{ rate, want string }{{"peak", "peak"}, {"", ""}} {
		var rateID uint32
		if c.rate != "" {
			rateID = 7 // any id: the value keeps only whether there is one
		}
		v, err := encodeWindowValue(&window{count: 1, perEvent: true, rate: rateID}, rated.groupKey)
		if err != nil {
			t.Fatal(err)
		}
		back = window{}
		if rate, err := decodeWindowValue(v, rated, &back); err != nil || rate != c.want {
			t.Errorf("rate %q: read back as rate %q (%v)", c.rate, rate, err)
		}
	}
	// A version 1 value (written before per-event money) still reads: the
	// same layout without the two money fields and the per-event flag.
	v1 := &window{count: 12, revision: 3, changed: true}
	v1.set(numSum, w.get(numSum))
	v1.set(numEmittedAmount, w.get(numEmittedAmount))
	v2, err := encodeWindowValue(v1, key.groupKey)
	if err != nil {
		t.Fatal(err)
	}
	zero := appendDecimal(nil, decimal.Zero)
	old := append([]byte{1}, v2[1:len(v2)-1-2*len(zero)]...)
	old = append(old, v2[len(v2)-1])
	back = window{}
	if _, err := decodeWindowValue(old, key, &back); err != nil {
		t.Fatalf("version 1 value: %v", err)
	}
	if back.count != 12 || !back.get(numSum).Equal(w.get(numSum)) || back.revision != 3 || !back.changed || back.perEvent || !back.get(numMoney).IsZero() {
		t.Errorf("version 1 value read as %+v", back)
	}
	if _, err := decodeWindowValue([]byte{1, 2}, key, &back); err == nil {
		t.Error("a truncated value decoded without error")
	}
	// Version 3 (one build: the rate as a field before the flags) reads.
	v3 := append(append([]byte{3}, encoded[1:len(encoded)-1]...), 4, 'p', 'e', 'a', 'k', encoded[len(encoded)-1])
	back = window{}
	if rate, err := decodeWindowValue(v3, key, &back); err != nil || rate != "peak" || back.count != w.count {
		t.Errorf("version 3 value: %+v, rate %q (%v), want the rate peak", back, rate, err)
	}
	// Version 4: a period with announced entitlement shares.
	p := &window{count: 3, revision: 2}
	p.set(numSum, decimal.NewFromInt(42))
	p.extra().announced, p.x.allowanceAnnounced = decimal.NewFromInt(80), decimal.RequireFromString("33.5")
	v4, err := encodeWindowValue(p, "")
	if err != nil || v4[0] != windowValueAnnounced {
		t.Fatalf("a period with announced shares encodes as version %d (%v), want %d", v4[0], err, windowValueAnnounced)
	}
	back = window{}
	if _, err := decodeWindowValue(v4, key, &back); err != nil || back.x == nil || !back.x.announced.Equal(p.x.announced) ||
		!back.x.allowanceAnnounced.Equal(p.x.allowanceAnnounced) || back.count != 3 || !back.get(numSum).Equal(decimal.NewFromInt(42)) {
		t.Errorf("version 4 value read back as %+v (%v)", back, err)
	}
	if plain, _ := encodeWindowValue(&window{count: 1}, ""); plain[0] != windowValueVersion {
		t.Errorf("a window without announcements encodes as version %d, want %d (older builds read it)", plain[0], windowValueVersion)
	}
	if _, err := decodeWindowValue(append([]byte{5}, encoded[1:]...), key, &back); err == nil {
		t.Error("a value of a later version decoded without error")
	}
}

func TestFloorDiv(t *testing.T) {
	for _, tt := range []struct{ t, size, want int64 }{{59, 60, 0}, {60, 60, 60}, {-1, 60, -60}, {-60, 60, -60}} {
		if got := floorDiv(tt.t, tt.size); got != tt.want {
			t.Errorf("floorDiv(%d, %d) = %d, want %d", tt.t, tt.size, got, tt.want)
		}
	}
}

// noStore is an empty cold store.
type noStore struct{}

func (noStore) Window([]byte) ([]byte, bool, error)    { return nil, false, nil }
func (noStore) HasDedup(int64, [16]byte) (bool, error) { return false, nil }

// TestIntegerSumsOverflowIntoDecimal: integer values add without
// allocating until the int64 would overflow; the total stays exact.
func TestIntegerSumsOverflowIntoDecimal(t *testing.T) {
	m, err := CompileMeters([]Meter{{Name: "bytes"}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	w := &window{}
	d := NewDecoder(m)
	want := decimal.Zero
	values := []string{"-5", "1.5", "-999999999999999999"}
	for range 11 { // 11 x ~1e18 overflows int64 (9.2e18)
		values = append(values, "999999999999999999")
	}
	for _, v := range values {
		evs, err := d.Decode([]byte(`{"id":"x","customer":"c","meter":"bytes","time":"2026-03-01T10:00:00Z","value":`+v+`}`), nil)
		if err != nil {
			// 1.5 is refused (integers only): decode it by hand.
			evs = []Event{{value: decimal.RequireFromString(v), meter: m.list[0]}}
		}
		if v != "1.5" && !evs[0].isInt {
			t.Errorf("%s: not taken as an integer", v)
		}
		w.add(&evs[0])
		want = want.Add(decimal.RequireFromString(v))
	}
	if got := w.quantity(m.list[0]); !got.Equal(want) {
		t.Errorf("sum %s, want %s", got, want)
	}
	evs, _ := d.Decode([]byte(`{"id":"x","customer":"c","meter":"bytes","time":"2026-03-01T10:00:00Z","value":123}`), nil)
	if !evs[0].isInt || evs[0].intValue != 123 {
		t.Errorf("value 123 decoded as isInt %v, %d", evs[0].isInt, evs[0].intValue)
	}
}

// allowanceRater gives the first 10 units of a period free, then charges 1
// a unit: which window an increment falls to depends on emission order.
type allowanceRater struct{ unitRater }

func (allowanceRater) Increment(_ rating.Subscriber, _ string, _ time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	ten := decimal.NewFromInt(10)
	return rating.Charge{Amount: decimal.Max(after, ten).Sub(decimal.Max(before, ten)), Currency: "EUR"}, nil
}

// TestEmissionOrderWithinACustomerIsByName: windows of one customer due at
// the same barrier are charged in the order of their window start, meter
// and group key by name, whatever order their groups first arrived in (and
// so whatever ids the shard gave them): the allowance falls to the same
// window on every replay. Red when they are ordered by id.
func TestEmissionOrderWithinACustomerIsByName(t *testing.T) {
	amounts := func(groups ...string) map[string]string {
		s := testShard()
		s.rater = allowanceRater{}
		for i, g := range groups {
			ev := event(fmt.Sprint("e", i), "sub-1", t0.Add(time.Duration(i)*time.Second), 8, "dim="+g)
			s.apply(&ev)
		}
		snap := cut(s, t0.Add(5*time.Minute), false)
		if snap.err != nil {
			t.Fatal(snap.err)
		}
		out := map[string]string{}
		for _, r := range rowsOf(t, snap) {
			out[r.GroupKey] = r.Amount.String()
		}
		return out
	}
	first, second := amounts("b", "a", "c"), amounts("c", "a", "b")
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Errorf("amounts by group depend on arrival order: %v, then %v", first, second)
	}
	if first["dim=a"] != "0" || first["dim=b"] != "6" || first["dim=c"] != "8" {
		t.Errorf("amounts %v, want the allowance to fall to dim=a (0), then 6, then 8", first)
	}
}

// rowsOf decodes the rows snap emitted for the outbox.
func rowsOf(t testing.TB, snap *shardSnapshot) []RatedRow {
	t.Helper()
	rows := make([]RatedRow, len(snap.encodedRows))
	for i, b := range snap.encodedRows {
		if err := decodeRow(b, &rows[i]); err != nil {
			t.Fatalf("row %d of the snapshot: %v", i, err)
		}
	}
	return rows
}
