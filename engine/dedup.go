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
// their ids stay in the store until dedupHorizon, found through the cold
// index (coldids.go).
//
// Every id in memory is also in one index, whatever its bucket: a producer
// that re-stamps a retry with another time sends the same id in another
// bucket, and one lookup finds it. (Searching each bucket instead costs
// a lookup per bucket, and a backfill or a sparse stream holds thousands.)
// Buckets keep no list of their ids (16 more bytes an id): expiring one
// walks the index once, and buckets expire a few at a time.
// Invariants: buckets[b] exists iff some ids[id] == b; an id is remembered
// (in ids, or in the store and cold) in at most one bucket at or after the
// dedup expiry.
type dedupSet struct {
	ids     idTable // id -> its bucket
	cold    coldIDs // stored ids of buckets that left memory
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

// inMemory reports whether id is remembered in memory in a bucket at or
// after expiry (the dedup expiry: older buckets no longer count).
func (d *dedupSet) inMemory(id idHash, expiry int64) bool {
	b, ok := d.ids.get(id)
	return ok && b >= expiry
}

// insert remembers id, new, in bucketNs. nextSeq is the checkpoint that will
// persist it.
func (d *dedupSet) insert(bucketNs int64, id idHash, routing, nextSeq uint64) {
	d.ids.set(id, bucketNs) // an entry of an expired bucket moves here
	d.bucket(bucketNs).pendingSeq = nextSeq
	d.added = append(d.added, dedupAdd{bucketNs: bucketNs, id: id, routingHash: routing})
}

func (d *dedupSet) bucket(bucketNs int64) *dedupBucket {
	b := d.buckets[bucketNs]
	if b == nil {
		b = &dedupBucket{}
		d.buckets[bucketNs] = b
	}
	return b
}

// load adds a remembered id on recovery: in memory when its bucket is at
// or after memoryExpiry, to the cold index otherwise.
func (d *dedupSet) load(bucketNs int64, id idHash, memoryExpiry, expiry int64) {
	if bucketNs < memoryExpiry {
		d.cold.add(id, bucketNs, expiry)
		return
	}
	if _, ok := d.ids.get(id); ok {
		return
	}
	d.ids.set(id, bucketNs)
	d.bucket(bucketNs)
}

// expire forgets every bucket starting before beforeNs whose ids are in a
// durable checkpoint (pendingSeq <= durableSeq): its ids still within the
// dedup horizon (bucket at or after expiry) go to the cold index.
func (d *dedupSet) expire(beforeNs int64, durableSeq uint64, expiry int64) {
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
	d.ids.deleteIf(func(id idHash, bucket int64) bool {
		if !gone[bucket] {
			return false
		}
		if bucket >= expiry {
			d.cold.add(id, bucket, expiry)
		}
		return true
	})
}

// size is the number of ids remembered in memory, and slots of the cold
// index in use (stale ones included until a rebuild drops them).
func (d *dedupSet) size() int { return d.ids.len() + d.cold.len() }

// memoryBytes is what the two indexes hold (their tables; bucket entries
// are a few per 10 s).
func (d *dedupSet) memoryBytes() int { return d.ids.bytes() + d.cold.bytes() }

// duplicate reports whether ev's id was seen for meter m, in memory or, for
// buckets that left memory, in the store; if not, it remembers it.
func (s *shard) duplicate(ev *Event, m *meterSpec) bool {
	return s.seen(ev, eventIDHash(ev.Source, ev.ID, m.Name))
}

// seen reports whether id (of ev's time and customer) was remembered in a
// bucket still within the dedup horizon, in memory or in the store; if
// not, it remembers it, to be checkpointed with the next barrier. Usage
// and subscription events share it.
//
// Whatever the event's time: a producer that re-stamps a retry with
// another time still sends a duplicate. Ids in memory are indexed by id
// alone; ids of buckets that left memory are found through the cold index,
// which names the bucket whose stored ids to read. The answer depends on
// the records before ev and the watermark only, never on when barriers
// ran: an id moves from memory to the cold index, never out of both, until
// its bucket is before the dedup expiry.
func (s *shard) seen(ev *Event, id idHash) bool {
	expiry := s.rules.dedupExpiry(s.watermarkNs)
	if s.dedup.inMemory(id, expiry) {
		return true
	}
	var err error
	found := s.dedup.cold.buckets(id, expiry, func(bucket int64) bool {
		s.pending.coldReads++
		var ok bool
		ok, err = s.store.HasDedup(bucket, id)
		return ok || err != nil
	})
	if err != nil {
		s.pending.storeErr = err
	}
	if found {
		return true
	}
	bucket := floorDiv(ev.TimeNs, dedupBucketNs)
	if bucket < expiry {
		// Only a subscription or grant event gets here (usage this old is
		// late): a change backdated past the horizon is remembered from now, in the
		// watermark's bucket, so that its retries are found for as long
		// as any retry would be. Filed in its own bucket it would be
		// forgotten at once.
		bucket = floorDiv(s.watermarkNs, dedupBucketNs)
	}
	routing := routingHash(ev.Customer)
	if ev.SLA != nil && ev.SLA.Service != "" {
		routing = broadcastRouting
	}
	s.dedup.insert(bucket, id, routing, s.seq+1)
	return false
}
