package engine

import (
	"encoding/binary"
	"math/bits"
)

// coldIDs indexes the remembered ids whose dedup bucket left memory (older
// than dedupMemoryHorizon, still within dedupHorizon): 8 bytes a slot, a
// 32-bit hash of the id and its bucket, in an open-addressing table with
// linear probing and no pointers. The ids themselves are in the store,
// packed by bucket; the index says in which bucket to look, so that a
// producer's retry re-stamped with a later time is found whatever bucket
// its original is in. It costs a new record one probe of this table, and
// a store read only when the 32-bit hash matches (for another id, once in
// about 2^32 slots probed).
//
// The slot index is the top bits of the 32-bit hash, so a rebuild re-files
// slots without their ids.
//
// Invariant: every id in the store in a bucket at or after the dedup
// expiry and before the memory expiry has a slot here with its bucket
// (dedupSet.expire files ids here as their buckets leave memory; recovery
// files the stored ones). A slot whose bucket is before the dedup expiry is
// stale: lookups skip it, an insert may take it, a rebuild drops it.
type coldIDs struct {
	slots []uint64 // hash<<32 | bucket+coldBucketBias (never 0); 0 = empty
	shift uint     // 32 - log2(len(slots))
	used  int      // slots not empty, stale ones included
}

// coldBucketBias maps dedup buckets (their number, start / 10 s, is within
// ±9.3e8 for any int64 time) into 1..2^32-1, so that a slot in use is
// never 0.
const coldBucketBias = 1 << 31

const minColdSlots = 1024

func coldHash(id idHash) uint64 {
	x := binary.LittleEndian.Uint64(id[:8]) ^ binary.LittleEndian.Uint64(id[8:])
	return (x * 0x9E3779B97F4A7C15) >> 32
}

func coldSlot(hash uint64, bucketNs int64) uint64 {
	return hash<<32 | uint64(uint32(bucketNs/dedupBucketNs+coldBucketBias))
}

// coldBucket is the start of a slot's bucket.
func coldBucket(slot uint64) int64 { return (int64(uint32(slot)) - coldBucketBias) * dedupBucketNs }

// buckets calls found with each bucket at or after expiry that may hold id,
// until found reports true, and reports whether it did.
func (c *coldIDs) buckets(id idHash, expiry int64, found func(bucket int64) bool) bool {
	if c.used == 0 {
		return false
	}
	h := coldHash(id)
	mask := uint64(len(c.slots) - 1)
	for i := h >> c.shift; c.slots[i] != 0; i = (i + 1) & mask {
		s := c.slots[i]
		if s>>32 == h && coldBucket(s) >= expiry && found(coldBucket(s)) {
			return true
		}
	}
	return false
}

// add files id under bucket. The caller knows id is not here already in a
// bucket at or after expiry (it looked it up), so a stale slot on the way
// may take it.
func (c *coldIDs) add(id idHash, bucket, expiry int64) {
	if (c.used+1)*4 > len(c.slots)*3 {
		c.rebuild(expiry)
	}
	h := coldHash(id)
	mask := uint64(len(c.slots) - 1)
	i := h >> c.shift
	for ; c.slots[i] != 0; i = (i + 1) & mask {
		if coldBucket(c.slots[i]) < expiry {
			c.slots[i] = coldSlot(h, bucket)
			return
		}
	}
	c.slots[i] = coldSlot(h, bucket)
	c.used++
}

// rebuild drops the stale slots, in a table of at least twice the live
// ones. The slot index takes up to 32 bits of the hash: past 2^32 slots
// (32 GB, over 2^31 live ids in one shard) lookups would stay right but
// start at slot 0; size dedupHorizon long before that (README, Capacity).
func (c *coldIDs) rebuild(expiry int64) {
	live := 0
	for _, s := range c.slots {
		if s != 0 && coldBucket(s) >= expiry {
			live++
		}
	}
	size := max(minColdSlots, 1<<bits.Len(uint(2*live)))
	old := c.slots
	c.slots = make([]uint64, size)
	c.shift = uint(32 - bits.TrailingZeros(uint(size)))
	c.used = 0
	mask := uint64(size - 1)
	for _, s := range old {
		if s == 0 || coldBucket(s) < expiry {
			continue
		}
		i := (s >> 32) >> c.shift
		for c.slots[i] != 0 {
			i = (i + 1) & mask
		}
		c.slots[i] = s
		c.used++
	}
}

// len is the number of slots in use, stale ones included (a bound on the
// ids held, for metrics).
func (c *coldIDs) len() int { return c.used }

// bytes is the memory the index holds.
func (c *coldIDs) bytes() int { return 8 * len(c.slots) }
