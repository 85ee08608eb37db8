package engine

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

func TestRowCodecRoundTrip(t *testing.T) {
	d := decimal.RequireFromString
	row := RatedRow{Tenant: "t", Meter: "voice", Customer: "c\x01", GroupKey: `rate=UK\,x`,
		WindowStart: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), WindowEnd: time.Date(2026, 3, 1, 10, 1, 0, 0, time.UTC),
		Quantity: d("123.4500000001"), Count: 7, Amount: d("-0.000001"), Currency: "EUR", UnitPrice: d("0.5"),
		Revision: 3, Final: true, Breakdown: []rating.Line{{Description: "tier 1", Units: d("10"), UnitPrice: d("0.1"), Amount: d("1")}},
		Plan: "gold", QuantityDelta: d("-1.5"), AmountDelta: d("0.25"), Sign: 0}
	var back RatedRow
	if err := decodeRow(encodeRow(nil, &row), &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(mustJSON(t, back), mustJSON(t, row)) {
		t.Errorf("round trip:\n%s\nwant\n%s", mustJSON(t, back), mustJSON(t, row))
	}
	// Outbox entries written as JSON by earlier versions still read.
	back = RatedRow{}
	if err := decodeRow([]byte(mustJSON(t, row)), &back); err != nil || mustJSON(t, back) != mustJSON(t, row) {
		t.Errorf("JSON entry: %v\n%s", err, mustJSON(t, back))
	}
	enc := encodeRow(nil, &row)
	if err := decodeRow(enc[:len(enc)-3], &back); err == nil {
		t.Error("a truncated row decoded without error")
	}
	// Rows of the previous layout (0xB1, in an outbox before an upgrade)
	// still read, without plan and deltas.
	old := row
	old.Plan, old.QuantityDelta, old.AmountDelta, old.Sign = "", decimal.Zero, decimal.Zero, 0
	b1 := encodeRow(nil, &old)
	tail := appendDecimal(appendDecimal(appendBytes(nil, nil), decimal.Zero), decimal.Zero)
	b1 = b1[:len(b1)-len(tail)-1] // without the plan, the deltas and the sign
	b1[0] = rowCodecVersionB1
	back = RatedRow{}
	if err := decodeRow(b1, &back); err != nil || mustJSON(t, back) != mustJSON(t, old) {
		t.Errorf("0xB1 row: %v\n%s\nwant\n%s", err, mustJSON(t, back), mustJSON(t, old))
	}
	// A first revision of that layout gets its deltas (its values) and its
	// sign: rollups count it (independent review).
	old.Revision = 1
	b1 = encodeRow(nil, &old)
	b1 = b1[:len(b1)-len(tail)-1]
	b1[0] = rowCodecVersionB1
	if err := decodeRow(b1, &back); err != nil || back.Sign != 1 || !back.AmountDelta.Equal(old.Amount) || !back.QuantityDelta.Equal(old.Quantity) {
		t.Errorf("0xB1 first revision: %v, sign %d, deltas %s %s", err, back.Sign, back.QuantityDelta, back.AmountDelta)
	}
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAppendDecimalMatchesString checks the integer fast path writes what
// the general path (String) writes, at the edges of its range.
func TestAppendDecimalMatchesString(t *testing.T) {
	for _, s := range []string{"0", "-0", "1", "-1", "999999999999999999", "-999999999999999999", "1000000000000000000",
		"-1000000000000000000", "9223372036854775807", "123456789012345678901234", "1.5", "-0.25", "1e3", "0.00", "120"} {
		d := decimal.RequireFromString(s)
		fast := appendDecimal(nil, d)
		str := d.String()
		want := append(binary.AppendUvarint(nil, uint64(len(str))), str...)
		if !bytes.Equal(fast, want) {
			t.Errorf("appendDecimal(%s) = %q, want %q", s, fast, want)
		}
		r := byteReader{b: fast}
		if got := r.decimal(); r.err != nil || !got.Equal(d) {
			t.Errorf("%s read back as %s (%v)", s, got, r.err)
		}
	}
}
