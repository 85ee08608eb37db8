package engine

import (
	"testing"

	"github.com/shopspring/decimal"
)

// TestNumAgainstDecimal checks num against shopspring's decimal, which it
// stands in for: every value either converts exactly or is refused (big),
// sums are exact or refused, and the text and its parse match decimal's.
func TestNumAgainstDecimal(t *testing.T) {
	rng := seededRand(t, 1)
	edges := []string{"0", "1", "-1", "0.5", "-0.05", "999999999999999999", "-999999999999999999",
		"1000000000000000000", "0.000000000000000000001", "123456789.123456789", "9223372036854775807",
		"1E3", "-2.5E2", "1E17", "1E18", "0.10", "100"}
	random := func() decimal.Decimal {
		digits := rng.IntN(21)
		c := rng.Int64N(pow10[min(digits, 18)]+1) * []int64{1, -1}[rng.IntN(2)]
		return decimal.New(c, int32(rng.IntN(30)-24))
	}
	var values []decimal.Decimal
	for _, e := range edges {
		values = append(values, decimal.RequireFromString(e))
	}
	for range 20000 {
		values = append(values, random())
	}
	for i, d := range values {
		n, ok := numOf(d)
		if !ok {
			if d.NumDigits() <= 18 && d.Exponent() <= 0 {
				t.Fatalf("%s refused though its %d digits fit", d, d.NumDigits())
			}
			continue
		}
		if !n.decimal().Equal(d) {
			t.Fatalf("%s converted to %s", d, n.decimal())
		}
		if abs64(n.coef) >= numLimit || n.exp > 0 {
			t.Fatalf("%s converted to %+v, outside the invariant", d, n)
		}
		text := appendNumText(nil, n)
		if want := d.String(); string(text) != want {
			t.Fatalf("%s written %q, decimal writes %q", d, text, want)
		}
		if back, ok := parseNum(text); !ok || !back.decimal().Equal(d) {
			t.Fatalf("%q parsed as %+v (%v)", text, back, ok)
		}
		e := values[(i*7919+1)%len(values)]
		m, ok := numOf(e)
		if !ok {
			continue
		}
		sum, ok := addNum(n, m)
		want := d.Add(e)
		if ok && !sum.decimal().Equal(want) {
			t.Fatalf("%s + %s = %s, want %s", d, e, sum.decimal(), want)
		}
		if ok && abs64(sum.coef) >= numLimit {
			t.Fatalf("%s + %s gave %+v, outside the invariant", d, e, sum)
		}
		// A window adds exactly whether the sum fits a num or not.
		w := &window{}
		w.set(numSum, d)
		if w.addTo(numSum, e); !w.get(numSum).Equal(want) {
			t.Fatalf("window: %s + %s = %s, want %s", d, e, w.get(numSum), want)
		}
	}
	for _, bad := range []string{"", "-", ".", "1.", ".5", "1.2.3", "1e5", "+1", "0x10", "1 "} {
		if n, ok := parseNum([]byte(bad)); ok {
			t.Errorf("parseNum(%q) = %+v, want a refusal", bad, n)
		}
	}
}

// TestWindowDecimalsBeyondNum: window decimals too large for a num move
// to the window's extra state and stay exact, through sums, the state
// encoding and back.
func TestWindowDecimalsBeyondNum(t *testing.T) {
	huge := decimal.RequireFromString("123456789012345678901234567890.123456789")
	w := &window{}
	w.addTo(numSum, decimal.NewFromInt(5))
	w.addTo(numSum, huge)
	w.addTo(numSum, decimal.RequireFromString("0.5"))
	w.set(numEmittedAmount, huge.Neg())
	w.addMoney(decimal.RequireFromString("0.000000000000000000001")) // fits: 1e-21
	w.addMoney(decimal.NewFromInt(1))                                // 10^21 × 10^-21 does not
	want := huge.Add(decimal.RequireFromString("5.5"))
	if got := w.get(numSum); !got.Equal(want) {
		t.Fatalf("sum %s, want %s", got, want)
	}
	if !w.nums[numSum].big || !w.nums[numMoney].big {
		t.Fatalf("nums %+v: the huge sum and the fine money should be big", w.nums)
	}
	v, err := encodeWindowValue(w, "")
	if err != nil {
		t.Fatal(err)
	}
	var back window
	if _, err := decodeWindowValue(v, windowName{}, &back); err != nil {
		t.Fatal(err)
	}
	for i := range numFields {
		if a, b := w.get(i), back.get(i); !a.Equal(b) {
			t.Errorf("decimal %d: %s read back as %s", i, a, b)
		}
	}
	if got := back.get(numMoney).String(); got != "1.000000000000000000001" {
		t.Errorf("money %s", got)
	}
	// Back within range, the value is a num again.
	back.set(numSum, decimal.NewFromInt(7))
	if back.nums[numSum].big || !back.get(numSum).Equal(decimal.NewFromInt(7)) {
		t.Errorf("sum %+v after setting 7", back.nums[numSum])
	}
}
