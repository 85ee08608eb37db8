package engine

import (
	"encoding/binary"
	"math"
	"math/bits"
	"unsafe"
)

// idTable maps event id hashes to their dedup bucket: an open-addressing
// table with linear probing, 24 bytes a slot and no pointers, so that tens
// of millions of remembered ids cost the collector nothing to scan. A Go
// map of the same cost 88 bytes an id (BenchmarkDedupCapacity).
//
// The key is already a hash: its two halves, folded and multiplied by a
// Fibonacci constant, pick the slot. Deleted slots are tombstones until the
// table is rebuilt (when they and the ids fill three quarters of it).
type idTable struct {
	slots []idSlot // len is a power of two, or 0
	shift uint     // 64 - log2(len(slots))
	live  int      // ids held
	used  int      // slots not empty: ids and tombstones
}

type idSlot struct {
	id     idHash
	bucket int64 // emptySlot, deadSlot, or the id's dedup bucket
}

// Slot states; dedup buckets (event time / 10 s) never come near them.
const (
	emptySlot = math.MinInt64
	deadSlot  = math.MinInt64 + 1
)

const minIDTableSlots = 1024

func (t *idTable) index(id idHash) uint64 {
	x := binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:])
	return (x * 0x9E3779B97F4A7C15) >> t.shift
}

// get returns id's bucket.
func (t *idTable) get(id idHash) (int64, bool) {
	if t.live == 0 {
		return 0, false
	}
	mask := uint64(len(t.slots) - 1)
	for i := t.index(id); ; i = (i + 1) & mask {
		s := &t.slots[i]
		switch {
		case s.bucket == emptySlot:
			return 0, false
		case s.bucket != deadSlot && s.id == id:
			return s.bucket, true
		}
	}
}

// set files id under bucket, replacing the bucket it had.
func (t *idTable) set(id idHash, bucket int64) {
	if (t.used+1)*4 > len(t.slots)*3 {
		t.rebuild(max(minIDTableSlots, 2*(t.live+1)))
	}
	mask := uint64(len(t.slots) - 1)
	free := -1
	for i := t.index(id); ; i = (i + 1) & mask {
		s := &t.slots[i]
		switch {
		case s.bucket == emptySlot:
			if free < 0 {
				free = int(i)
				t.used++
			}
			t.slots[free] = idSlot{id: id, bucket: bucket}
			t.live++
			return
		case s.bucket == deadSlot:
			if free < 0 {
				free = int(i)
			}
		case s.id == id:
			s.bucket = bucket
			return
		}
	}
}

// deleteIf removes every id gone reports, and shrinks or cleans the table
// when tombstones dominate it.
func (t *idTable) deleteIf(gone func(id idHash, bucket int64) bool) {
	for i := range t.slots {
		s := &t.slots[i]
		if s.bucket != emptySlot && s.bucket != deadSlot && gone(s.id, s.bucket) {
			s.bucket = deadSlot
			t.live--
		}
	}
	if t.used-t.live > len(t.slots)/4 {
		t.rebuild(max(minIDTableSlots, 2*t.live))
	}
}

// rebuild re-files every id into a table of at least n slots, without
// tombstones.
func (t *idTable) rebuild(n int) {
	size := 1 << bits.Len(uint(n-1))
	old := t.slots
	t.slots = make([]idSlot, size)
	for i := range t.slots {
		t.slots[i].bucket = emptySlot
	}
	t.shift = uint(64 - bits.TrailingZeros(uint(size)))
	t.live, t.used = 0, 0
	mask := uint64(size - 1)
	for _, s := range old {
		if s.bucket == emptySlot || s.bucket == deadSlot {
			continue
		}
		i := t.index(s.id)
		for t.slots[i].bucket != emptySlot {
			i = (i + 1) & mask
		}
		t.slots[i] = s
		t.live++
		t.used++
	}
}

// len is the number of ids held.
func (t *idTable) len() int { return t.live }

// bytes is the memory the table holds.
func (t *idTable) bytes() int { return len(t.slots) * int(unsafe.Sizeof(idSlot{})) }

// FNV-1a, 128 bits (hash/fnv's New128a), without the allocations of its
// hash.Hash interface: the ids in the store were hashed with it.
const (
	fnv128OffsetHi   = 0x6c62272e07bb0142
	fnv128OffsetLo   = 0x62b821756295c58d
	fnv128PrimeLo    = 0x13b // the prime is 2^88 + 0x13b
	fnv128PrimeShift = 24    // 88 - 64
)

type fnv128a struct{ hi, lo uint64 }

func newFNV128a() fnv128a { return fnv128a{fnv128OffsetHi, fnv128OffsetLo} }

func (h *fnv128a) writeString(s string) {
	for i := 0; i < len(s); i++ {
		h.writeByte(s[i])
	}
}

func (h *fnv128a) writeByte(c byte) {
	h.lo ^= uint64(c)
	carry, lo := bits.Mul64(h.lo, fnv128PrimeLo)
	h.hi = h.hi*fnv128PrimeLo + carry + h.lo<<fnv128PrimeShift
	h.lo = lo
}

func (h *fnv128a) sum() idHash {
	var out idHash
	binary.BigEndian.PutUint64(out[:8], h.hi)
	binary.BigEndian.PutUint64(out[8:], h.lo)
	return out
}
