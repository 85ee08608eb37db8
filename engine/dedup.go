package engine

import (
	"hash/fnv"

	"github.com/cespare/xxhash/v2"
)

// dedupBucketNs is the event-time width of a dedup bucket (10s): expiry drops whole
// buckets, in memory and in the store (one range delete).
const dedupBucketNs = int64(10e9)

// idHash is the 128-bit identity of an event for one meter: FNV-1a over
// source, id and meter (one record feeds every meter reading its type).
// Collisions at 128 bits are negligible at any volume Tally will see.
type idHash [16]byte

func eventIDHash(source, id, meter string) idHash {
	h := fnv.New128a()
	h.Write([]byte(source))
	h.Write([]byte{0})
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(meter))
	var out idHash
	h.Sum(out[:0])
	return out
}

// routingHash picks a customer's shard. It is stable across processes and
// versions: dedup entries store it to find their shard on restart.
func routingHash(customer string) uint64 { return xxhash.Sum64String(customer) }

// dedupSet remembers event ids by event-time bucket. It belongs to one shard.
// Buckets older than the shard's memory horizon leave memory once durable;
// their ids stay in the store until dedupHorizon and are looked up there.
type dedupSet struct {
	buckets map[int64]*dedupBucket
	// added holds entries new since the last checkpoint.
	added []dedupAdd
	// sizeHint is the size of the largest bucket expired so far.
	sizeHint int
}

type dedupBucket struct {
	ids map[idHash]struct{}
	// pendingSeq is the checkpoint that will hold the bucket's newest ids.
	pendingSeq uint64
}

type dedupAdd struct {
	bucketNs    int64
	id          idHash
	routingHash uint64
}

func newDedupSet() *dedupSet {
	return &dedupSet{buckets: make(map[int64]*dedupBucket)}
}

func (d *dedupSet) contains(bucketNs int64, id idHash) bool {
	b := d.buckets[bucketNs]
	if b == nil {
		return false
	}
	_, ok := b.ids[id]
	return ok
}

// containsElsewhere reports whether id is in a bucket in memory other than
// bucketNs: a retry may carry another time than its original. Buckets in
// memory are few (the memory horizon, and future-dated ones), so this is a
// handful of map lookups.
func (d *dedupSet) containsElsewhere(bucketNs int64, id idHash) bool {
	for start, b := range d.buckets {
		if start == bucketNs {
			continue
		}
		if _, ok := b.ids[id]; ok {
			return true
		}
	}
	return false
}

// add remembers id; nextSeq is the checkpoint that will persist it.
func (d *dedupSet) add(bucketNs int64, id idHash, routing, nextSeq uint64) {
	d.insert(bucketNs, id, routing, nextSeq)
}

// insert remembers id unless it is already there, and reports whether it
// was new: contains and add in one map operation.
func (d *dedupSet) insert(bucketNs int64, id idHash, routing, nextSeq uint64) bool {
	b := d.bucket(bucketNs)
	n := len(b.ids)
	b.ids[id] = struct{}{}
	if len(b.ids) == n {
		return false
	}
	b.pendingSeq = nextSeq
	d.added = append(d.added, dedupAdd{bucketNs: bucketNs, id: id, routingHash: routing})
	return true
}

func (d *dedupSet) bucket(bucketNs int64) *dedupBucket {
	b := d.buckets[bucketNs]
	if b == nil {
		// Sized like the largest bucket so far: buckets of a steady stream
		// hold about as many ids, and growing a map step by step rehashes
		// it each time.
		b = &dedupBucket{ids: make(map[idHash]struct{}, d.sizeHint)}
		d.buckets[bucketNs] = b
	}
	return b
}

// load adds a remembered id on recovery.
func (d *dedupSet) load(bucketNs int64, id idHash) {
	d.bucket(bucketNs).ids[id] = struct{}{}
}

// expire forgets every bucket starting before beforeNs whose ids are in a
// durable checkpoint (pendingSeq <= durableSeq).
func (d *dedupSet) expire(beforeNs int64, durableSeq uint64) {
	for start, b := range d.buckets {
		if start < beforeNs && b.pendingSeq <= durableSeq {
			d.sizeHint = max(d.sizeHint, len(b.ids))
			delete(d.buckets, start)
		}
	}
}

func (d *dedupSet) size() int {
	n := 0
	for _, b := range d.buckets {
		n += len(b.ids)
	}
	return n
}
