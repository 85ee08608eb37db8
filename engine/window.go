package engine

import (
	"encoding/binary"
	"fmt"

	"github.com/shopspring/decimal"
)

// windowKey is a window's identity inside one tenant.
type windowKey struct {
	meter, customer, groupKey string
	startNs                   int64
}

// window is the aggregate of one (meter, customer, group, window start). It is
// owned by exactly one shard goroutine; nothing else touches it.
type window struct {
	key   windowKey
	count uint64
	sum   decimal.Decimal
	// revision is the last revision emitted; 0 means never emitted.
	revision uint64
	// emittedAmount is the amount of the last emitted revision, so that the
	// revenue of a revision is counted as the difference.
	emittedAmount decimal.Decimal
	// changed is set when the aggregate differs from its last emitted revision.
	changed bool
	// dirty is set when the aggregate differs from its last checkpoint.
	dirty bool
	// queued is set while the window is in the shard's unemitted list.
	queued bool
}

// encodeWindowKey renders k as the state key. Identifiers never contain NUL
// (the decoder refuses them), so NUL separates them unambiguously.
func encodeWindowKey(k windowKey) []byte {
	b := make([]byte, 0, len(k.meter)+len(k.customer)+len(k.groupKey)+11)
	b = append(b, k.meter...)
	b = append(b, 0)
	b = append(b, k.customer...)
	b = append(b, 0)
	b = append(b, k.groupKey...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(k.startNs))
}

func decodeWindowKey(b []byte) (windowKey, error) {
	var k windowKey
	var parts [3]string
	for i := range parts {
		j := indexByte(b, 0)
		if j < 0 {
			return k, fmt.Errorf("window key %q: missing separator", b)
		}
		parts[i] = string(b[:j])
		b = b[j+1:]
	}
	if len(b) != 8 {
		return k, fmt.Errorf("window key: start has %d bytes, want 8", len(b))
	}
	k.meter, k.customer, k.groupKey = parts[0], parts[1], parts[2]
	k.startNs = int64(binary.BigEndian.Uint64(b))
	return k, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// windowValueVersion prefixes every encoded window so the layout can evolve.
const windowValueVersion = 1

// encodeWindowValue renders the durable part of w: count, sum, revision,
// emitted amount and whether it changed since its last emission.
func encodeWindowValue(w *window) []byte {
	b := make([]byte, 0, 48)
	b = append(b, windowValueVersion)
	b = binary.AppendUvarint(b, w.count)
	b = appendDecimal(b, w.sum)
	b = binary.AppendUvarint(b, w.revision)
	b = appendDecimal(b, w.emittedAmount)
	if w.changed {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b
}

func decodeWindowValue(b []byte, w *window) error {
	r := byteReader{b: b}
	if v := r.byte(); v != windowValueVersion {
		return fmt.Errorf("window value version %d, want %d", v, windowValueVersion)
	}
	w.count = r.uvarint()
	w.sum = r.decimal()
	w.revision = r.uvarint()
	w.emittedAmount = r.decimal()
	w.changed = r.byte() == 1
	if r.err != nil {
		return fmt.Errorf("window value: %w", r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("window value: %d trailing bytes", len(r.b))
	}
	return nil
}

func appendDecimal(b []byte, d decimal.Decimal) []byte {
	s := d.String()
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// byteReader decodes the varint/decimal layouts above, keeping the first error.
type byteReader struct {
	b   []byte
	err error
}

func (r *byteReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.setErr(fmt.Errorf("truncated"))
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *byteReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.setErr(fmt.Errorf("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *byteReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.setErr(fmt.Errorf("truncated: want %d bytes, have %d", n, len(r.b)))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *byteReader) decimal() decimal.Decimal {
	s := r.bytes()
	if r.err != nil {
		return decimal.Decimal{}
	}
	d, err := decimal.NewFromString(string(s))
	if err != nil {
		r.setErr(err)
	}
	return d
}

func (r *byteReader) setErr(err error) {
	if r.err == nil {
		r.err = err
	}
}

// floorDiv returns the largest multiple of size <= t (t may be negative).
func floorDiv(t, size int64) int64 {
	q := t / size
	if t%size != 0 && t < 0 {
		q--
	}
	return q * size
}
