package engine

import (
	"hash/fnv"

	"github.com/cespare/xxhash/v2"
)

// dedupBucketNs is the event-time width of a dedup bucket: expiry drops whole
// buckets, in memory and in the store (one range delete).
const dedupBucketNs = int64(60e9)

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
type dedupSet struct {
	buckets map[int64]map[idHash]struct{}
	// added holds entries new since the last checkpoint.
	added []dedupAdd
}

type dedupAdd struct {
	bucketNs    int64
	id          idHash
	routingHash uint64
}

func newDedupSet() *dedupSet {
	return &dedupSet{buckets: make(map[int64]map[idHash]struct{})}
}

// seen reports whether id was seen in bucket, and remembers it if not.
func (d *dedupSet) seen(bucketNs int64, id idHash, routing uint64) bool {
	b := d.buckets[bucketNs]
	if b == nil {
		b = make(map[idHash]struct{})
		d.buckets[bucketNs] = b
	}
	if _, ok := b[id]; ok {
		return true
	}
	b[id] = struct{}{}
	d.added = append(d.added, dedupAdd{bucketNs: bucketNs, id: id, routingHash: routing})
	return false
}

// load adds a remembered id on recovery.
func (d *dedupSet) load(bucketNs int64, id idHash) {
	b := d.buckets[bucketNs]
	if b == nil {
		b = make(map[idHash]struct{})
		d.buckets[bucketNs] = b
	}
	b[id] = struct{}{}
}

// expire forgets every bucket starting before beforeNs.
func (d *dedupSet) expire(beforeNs int64) {
	for start := range d.buckets {
		if start < beforeNs {
			delete(d.buckets, start)
		}
	}
}

func (d *dedupSet) size() int {
	n := 0
	for _, b := range d.buckets {
		n += len(b)
	}
	return n
}
