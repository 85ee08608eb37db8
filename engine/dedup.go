package engine

import (
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
	h := newFNV128a()
	h.writeString(source)
	h.writeByte(0)
	h.writeString(id)
	h.writeByte(0)
	h.writeString(meter)
	return h.sum()
}

// routingHash picks a customer's shard. It is stable across processes and
// versions: dedup entries store it to find their shard on restart.
func routingHash(customer string) uint64 { return xxhash.Sum64String(customer) }

// dedupSet remembers event ids by event-time bucket. It belongs to one shard.
// Buckets older than the shard's memory horizon leave memory once durable;
// their ids stay in the store until dedupHorizon and are looked up there.
//
// Every id in memory is also in one index, whatever its bucket: a producer
// that re-stamps a retry with another time sends the same id in another
// bucket, and one map lookup finds it. (Searching each bucket instead costs
// a lookup per bucket, and a backfill or a sparse stream holds thousands.)
// Buckets keep no list of their ids (16 more bytes an id): expiring one
// walks the index once, and buckets expire a few at a time.
// Invariant: buckets[b] exists iff some ids[id] == b.
type dedupSet struct {
	ids     idTable // id -> its bucket
	buckets map[int64]*dedupBucket
	// added holds entries new since the last checkpoint.
	added []dedupAdd
}

type dedupBucket struct {
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

// contains reports whether id is remembered in memory in bucketNs, or in
// any bucket at or after freshNs (the memory horizon). An id held only in
// an older bucket, which the next durable barrier drops, does not count:
// whether a barrier happened to run first would decide it.
func (d *dedupSet) contains(id idHash, bucketNs, freshNs int64) bool {
	b, ok := d.ids.get(id)
	return ok && (b == bucketNs || b >= freshNs)
}

// insert remembers id in bucketNs unless contains, and reports whether it
// was new. nextSeq is the checkpoint that will persist it.
func (d *dedupSet) insert(bucketNs int64, id idHash, routing, nextSeq uint64, freshNs int64) bool {
	if d.contains(id, bucketNs, freshNs) {
		return false
	}
	d.ids.set(id, bucketNs) // an entry of an older bucket moves here
	d.bucket(bucketNs).pendingSeq = nextSeq
	d.added = append(d.added, dedupAdd{bucketNs: bucketNs, id: id, routingHash: routing})
	return true
}

func (d *dedupSet) bucket(bucketNs int64) *dedupBucket {
	b := d.buckets[bucketNs]
	if b == nil {
		b = &dedupBucket{}
		d.buckets[bucketNs] = b
	}
	return b
}

// load adds a remembered id on recovery.
func (d *dedupSet) load(bucketNs int64, id idHash) {
	if _, ok := d.ids.get(id); ok {
		return
	}
	d.ids.set(id, bucketNs)
	d.bucket(bucketNs)
}

// expire forgets every bucket starting before beforeNs whose ids are in a
// durable checkpoint (pendingSeq <= durableSeq).
func (d *dedupSet) expire(beforeNs int64, durableSeq uint64) {
	var gone map[int64]bool
	for start, b := range d.buckets {
		if start < beforeNs && b.pendingSeq <= durableSeq {
			if gone == nil {
				gone = make(map[int64]bool)
			}
			gone[start] = true
			delete(d.buckets, start)
		}
	}
	if gone == nil {
		return
	}
	d.ids.deleteIf(func(bucket int64) bool { return gone[bucket] })
}

func (d *dedupSet) size() int { return d.ids.len() }

// duplicate reports whether ev's id was seen for meter m, in memory or, for
// buckets that left memory, in the store; if not, it remembers it.
func (s *shard) duplicate(ev *Event, m *meterSpec) bool {
	return s.seen(ev, eventIDHash(ev.Source, ev.ID, m.Name))
}

// seen reports whether id (of ev's time and customer) was remembered, in
// memory or, for buckets that left memory, in the store; if not, it
// remembers it, to be checkpointed with the next barrier. Usage and
// subscription events share it.
//
// Ids in memory are indexed by id alone, whatever their bucket: a producer
// that re-stamps a retry with another time still sends a duplicate, and it
// is found as long as the original's bucket is in memory (dedupMemoryHorizon
// behind the watermark, or ahead of it). Past that, only the event's own
// bucket is looked up in the store: a lookup by id alone in every stored
// bucket would cost each new record a Pebble read (issue 11, hole 4).
func (s *shard) seen(ev *Event, id idHash) bool {
	bucket := floorDiv(ev.TimeNs, dedupBucketNs)
	fresh := s.rules.dedupMemoryExpiry(s.watermarkNs)
	if bucket >= fresh {
		// The usual case: the bucket is wholly in memory, and the index of
		// every id in memory tells whether the id was there, in any bucket
		// within the memory horizon.
		return !s.dedup.insert(bucket, id, routingHash(ev.Customer), s.seq+1, fresh)
	}
	if s.dedup.contains(id, bucket, fresh) {
		return true
	}
	s.pending.coldReads++
	found, err := s.store.HasDedup(bucket, id)
	if err != nil {
		s.pending.storeErr = err
	}
	if found {
		return true
	}
	s.dedup.insert(bucket, id, routingHash(ev.Customer), s.seq+1, fresh)
	return false
}
