package engine

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// Outbox rows are encoded in a compact binary layout rather than JSON:
// every row is written at a checkpoint and read by every sink, and JSON
// was a tenth of the engine's CPU (bench/RESULTS.md). Entries starting
// with '{' are JSON written by earlier versions and are still read.

// rowCodecVersion leads an encoded row: 0xB2 adds the plan, the deltas
// and the sign to 0xB1's fields (0xB1 rows, written before, decode with
// none: zero deltas).
const (
	rowCodecVersion   = 0xB2
	rowCodecVersionB1 = 0xB1
)

func encodeRow(b []byte, r *RatedRow) []byte {
	b = append(b, rowCodecVersion)
	for _, s := range [...]string{r.Tenant, r.Meter, r.Customer, r.GroupKey, r.Currency} {
		b = appendBytes(b, []byte(s))
	}
	b = binary.AppendVarint(b, r.WindowStart.UnixNano())
	b = binary.AppendVarint(b, r.WindowEnd.UnixNano())
	b = appendDecimal(b, r.Quantity)
	b = binary.AppendUvarint(b, r.Count)
	b = appendDecimal(b, r.Amount)
	b = appendDecimal(b, r.UnitPrice)
	b = binary.AppendUvarint(b, r.Revision)
	final := byte(0)
	if r.Final {
		final = 1
	}
	b = append(b, final)
	b = binary.AppendUvarint(b, uint64(len(r.Breakdown)))
	for _, l := range r.Breakdown {
		b = appendBytes(b, []byte(l.Description))
		b = appendDecimal(b, l.Units)
		b = appendDecimal(b, l.UnitPrice)
		b = appendDecimal(b, l.Amount)
	}
	b = appendBytes(b, []byte(r.Plan))
	b = appendDecimal(b, r.QuantityDelta)
	b = appendDecimal(b, r.AmountDelta)
	return append(b, byte(r.Sign))
}

func decodeRow(b []byte, r *RatedRow) error {
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, r); err != nil {
			return err
		}
		r.inferDeltas()
		return nil
	}
	rd := byteReader{b: b}
	v := rd.byte()
	if v != rowCodecVersion && v != rowCodecVersionB1 {
		return fmt.Errorf("row layout %#x, want %#x", v, rowCodecVersion)
	}
	for _, s := range [...]*string{&r.Tenant, &r.Meter, &r.Customer, &r.GroupKey, &r.Currency} {
		*s = string(rd.bytes())
	}
	r.WindowStart = time.Unix(0, rd.varint()).UTC()
	r.WindowEnd = time.Unix(0, rd.varint()).UTC()
	r.Quantity = rd.decimal()
	r.Count = rd.uvarint()
	r.Amount = rd.decimal()
	r.UnitPrice = rd.decimal()
	r.Revision = rd.uvarint()
	r.Final = rd.byte() == 1
	n := rd.uvarint()
	if rd.err == nil && n > uint64(len(rd.b)) {
		return fmt.Errorf("row: %d breakdown lines in %d bytes", n, len(rd.b))
	}
	if n > 0 && rd.err == nil {
		r.Breakdown = make([]rating.Line, n)
		for i := range r.Breakdown {
			l := &r.Breakdown[i]
			l.Description = string(rd.bytes())
			l.Units, l.UnitPrice, l.Amount = rd.decimal(), rd.decimal(), rd.decimal()
		}
	}
	if v == rowCodecVersion {
		r.Plan = string(rd.bytes())
		r.QuantityDelta, r.AmountDelta = rd.decimal(), rd.decimal()
		r.Sign = int8(rd.byte())
	} else {
		r.inferDeltas()
	}
	if rd.err != nil {
		return fmt.Errorf("row: %w", rd.err)
	}
	if len(rd.b) != 0 {
		return fmt.Errorf("row: %d trailing bytes", len(rd.b))
	}
	return nil
}

// inferDeltas sets the deltas of a row written before rows carried them
// (an outbox entry of an earlier version, delivered after an upgrade): a
// first revision's are its values; a later one's previous values are not
// known, so they stay 0 (README: drain the sinks before such an upgrade,
// or rollups miss those changes).
func (r *RatedRow) inferDeltas() {
	if r.Revision > 1 || r.Sign != 0 || !r.AmountDelta.IsZero() || !r.QuantityDelta.IsZero() {
		return
	}
	r.setDeltas(decimal.Zero, decimal.Zero, !strings.HasPrefix(r.GroupKey, "@"))
}
