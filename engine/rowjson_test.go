package engine

import (
	"bytes"
	"encoding/json"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// TestRatedRowAppendJSON checks AppendJSON writes exactly what json.Marshal
// writes, on random rows: strings with HTML characters, controls, invalid
// UTF-8 and U+2028; decimals of every sign, scale and size (past int64
// too); times in other zones and outside the years JSON allows.
func TestRatedRowAppendJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pieces := []string{"", "a", "<", ">", "sub-000123", "voice_seconds", "rate=UK\\,x", "<b>", "&", "\"q\"", "\x00\x1f", "é", "\u2028", "\xff\xfe", "日本", "EUR", " "}
	str := func() string {
		s := ""
		for range rng.IntN(4) {
			s += pieces[rng.IntN(len(pieces))]
		}
		return s
	}
	dec := func() decimal.Decimal {
		var coef *big.Int
		switch rng.IntN(4) {
		case 0:
			coef = big.NewInt(rng.Int64N(1000) - 500)
		case 1:
			coef = big.NewInt(rng.Int64() - rng.Int64())
		case 2:
			coef = new(big.Int).Lsh(big.NewInt(rng.Int64N(1<<40)+1), uint(rng.IntN(80)))
			if rng.IntN(2) == 0 {
				coef.Neg(coef)
			}
		default:
			coef = big.NewInt(0)
		}
		if rng.IntN(8) == 0 {
			return decimal.Decimal{} // the zero value
		}
		return decimal.NewFromBigInt(coef, int32(rng.IntN(30)-24))
	}
	zones := []*time.Location{time.UTC, time.FixedZone("x", 5*3600+1800), time.FixedZone("y", -8*3600)}
	tm := func() time.Time {
		ns := rng.Int64N(1<<62) - 1<<61
		tt := time.Unix(0, ns).In(zones[rng.IntN(len(zones))])
		if rng.IntN(50) == 0 {
			tt = tt.AddDate(rng.IntN(20000)-10000, 0, 0)
		}
		return tt
	}
	for i := range 20_000 {
		r := RatedRow{Tenant: str(), Meter: str(), Customer: str(), GroupKey: str(), WindowStart: tm(), WindowEnd: tm(),
			Quantity: dec(), Count: rng.Uint64() >> rng.IntN(64), Amount: dec(), Currency: str(), UnitPrice: dec(),
			Revision: rng.Uint64N(100), Final: rng.IntN(2) == 0, Plan: str(), QuantityDelta: dec(), AmountDelta: dec(), Sign: int8(rng.IntN(3) - 1)}
		switch rng.IntN(3) {
		case 1:
			r.Breakdown = []rating.Line{}
		case 2:
			for range rng.IntN(3) + 1 {
				r.Breakdown = append(r.Breakdown, rating.Line{Description: str(), Units: dec(), UnitPrice: dec(), Amount: dec()})
			}
		}
		want, wantErr := json.Marshal(&r)
		got, gotErr := r.AppendJSON([]byte("prefix"))
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("row %d: json.Marshal error %v, AppendJSON error %v", i, wantErr, gotErr)
		}
		if wantErr == nil && !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Fatalf("row %d:\nAppendJSON  %s\njson.Marshal %s", i, got[len("prefix"):], want)
		}
	}
}

// benchRow is a usual rated row: one breakdown line, small decimals.
func benchRow() RatedRow {
	d := decimal.RequireFromString
	return RatedRow{Tenant: "default", Meter: "voice_seconds", Customer: "sub-000123", GroupKey: "destination=uk",
		WindowStart: t0, WindowEnd: t0.Add(time.Minute), Quantity: d("310"), Count: 4, Amount: d("1.55"), Currency: "EUR",
		UnitPrice: d("0.005"), Revision: 2, Final: true,
		Breakdown: []rating.Line{{Description: "per unit", Units: d("310"), UnitPrice: d("0.005"), Amount: d("1.55")}}}
}

func BenchmarkRatedRowJSON(b *testing.B) {
	row := benchRow()
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&row); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			var err error
			if buf, err = row.AppendJSON(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeRow measures what a sink pays to read a row back from the
// outbox.
func BenchmarkDecodeRow(b *testing.B) {
	row := benchRow()
	encoded := encodeRow(nil, &row)
	b.ReportAllocs()
	for b.Loop() {
		var r RatedRow
		if err := decodeRow(encoded, &r); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRowIdentity: the identity, the rated topic's key, as README documents
// it: tenant|meter|customer|group key|window start (RFC 3339, UTC).
func TestRowIdentity(t *testing.T) {
	row := benchRow()
	row.WindowStart = time.Date(2026, 3, 1, 11, 0, 0, 0, time.FixedZone("CET", 3600))
	want := "default|voice_seconds|sub-000123|destination=uk|2026-03-01T10:00:00Z"
	if got := row.Identity(); got != want {
		t.Errorf("Identity() = %q, want %q", got, want)
	}
	if got := string(row.AppendIdentity([]byte("x"))); got != "x"+want {
		t.Errorf("AppendIdentity = %q, want %q", got, "x"+want)
	}
}
