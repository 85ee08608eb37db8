package engine

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// AppendJSON appends r as json.Marshal(r) would write it, byte for byte
// (TestRatedRowAppendJSON compares the two on random rows), but without
// reflection and, for the usual strings, integers and UTC times, without
// allocating: the rated-usage topic encodes every row it carries, and
// json.Marshal was 4% of the engine's CPU and 40 allocations a row there
// (bench/RESULTS.md). Anything unusual is handed to the same encoders
// json.Marshal uses.
func (r *RatedRow) AppendJSON(b []byte) ([]byte, error) {
	var err error
	b = append(b, `{"tenant":`...)
	b = appendJSONString(b, r.Tenant)
	b = append(b, `,"meter":`...)
	b = appendJSONString(b, r.Meter)
	b = append(b, `,"customer":`...)
	b = appendJSONString(b, r.Customer)
	b = append(b, `,"group_key":`...)
	b = appendJSONString(b, r.GroupKey)
	b = append(b, `,"window_start":`...)
	if b, err = appendJSONTime(b, r.WindowStart); err != nil {
		return nil, err
	}
	b = append(b, `,"window_end":`...)
	if b, err = appendJSONTime(b, r.WindowEnd); err != nil {
		return nil, err
	}
	b = append(b, `,"quantity":`...)
	b = appendJSONDecimal(b, r.Quantity)
	b = append(b, `,"count":`...)
	b = strconv.AppendUint(b, r.Count, 10)
	b = append(b, `,"amount":`...)
	b = appendJSONDecimal(b, r.Amount)
	b = append(b, `,"currency":`...)
	b = appendJSONString(b, r.Currency)
	b = append(b, `,"unit_price":`...)
	b = appendJSONDecimal(b, r.UnitPrice)
	b = append(b, `,"revision":`...)
	b = strconv.AppendUint(b, r.Revision, 10)
	b = append(b, `,"final":`...)
	b = strconv.AppendBool(b, r.Final)
	if len(r.Breakdown) > 0 {
		b = append(b, `,"breakdown":`...)
		b = AppendBreakdownJSON(b, r.Breakdown)
	}
	if r.Plan != "" {
		b = append(b, `,"plan":`...)
		b = appendJSONString(b, r.Plan)
	}
	b = append(b, `,"quantity_delta":`...)
	b = appendJSONDecimal(b, r.QuantityDelta)
	b = append(b, `,"amount_delta":`...)
	b = appendJSONDecimal(b, r.AmountDelta)
	b = append(b, `,"sign":`...)
	b = strconv.AppendInt(b, int64(r.Sign), 10)
	return append(b, '}'), nil
}

// AppendBreakdownJSON appends lines as json.Marshal(lines) would write them
// when there are some ("[]" when there are none, where json.Marshal writes
// null), without reflection: the ClickHouse sink writes it for every row.
func AppendBreakdownJSON(b []byte, lines []rating.Line) []byte {
	b = append(b, '[')
	for i, l := range lines {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"description":`...)
		b = appendJSONString(b, l.Description)
		b = append(b, `,"units":`...)
		b = appendJSONDecimal(b, l.Units)
		b = append(b, `,"unit_price":`...)
		b = appendJSONDecimal(b, l.UnitPrice)
		b = append(b, `,"amount":`...)
		b = appendJSONDecimal(b, l.Amount)
		b = append(b, '}')
	}
	return append(b, ']')
}

// appendJSONString quotes s as encoding/json does. Printable ASCII other
// than the characters it escapes (" \ < > &) is copied; anything else goes
// through json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONTime writes t as time.Time.MarshalJSON does (RFC 3339 with
// nanoseconds, quoted), which refuses years outside 0..9999.
func appendJSONTime(b []byte, t time.Time) ([]byte, error) {
	if y := t.Year(); y < 0 || y > 9999 {
		q, err := t.MarshalJSON()
		return append(b, q...), err
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"'), nil
}

// appendJSONDecimal writes d as decimal.Decimal.MarshalJSON does: its
// String, quoted unless decimal.MarshalJSONWithoutQuotes. Integers and
// fractions whose coefficient fits 18 digits are formatted here; others by
// String.
func appendJSONDecimal(b []byte, d decimal.Decimal) []byte {
	quote := !decimal.MarshalJSONWithoutQuotes
	if quote {
		b = append(b, '"')
	}
	b = appendDecimalText(b, d)
	if quote {
		b = append(b, '"')
	}
	return b
}

// appendDecimalText appends d.String().
func appendDecimalText(b []byte, d decimal.Decimal) []byte {
	exp := d.Exponent()
	if exp > 0 || exp < -18 || d.NumDigits() > 18 || (exp < 0 && !decimal.TrimTrailingZeros) {
		return append(b, d.String()...)
	}
	return appendNumText(b, num{coef: d.CoefficientInt64(), exp: exp})
}
