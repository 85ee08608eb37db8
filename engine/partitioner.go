package engine

import (
	"fmt"
	"hash/crc32"
	"maps"
)

// Partitioner names the function producers place a customer's records with:
// the partition of key k among n. Tally needs it to check that every record
// arrived on its customer's partition (see ownership in docs/scale-out.md).
type Partitioner string

// Partitioners producers use, keyed by the billing customer.
const (
	// PartitionerMurmur2 is Kafka's Java default and franz-go's: murmur2 of
	// the key, sign bit cleared, modulo n. librdkafka's murmur2_random.
	PartitionerMurmur2 Partitioner = "murmur2"
	// PartitionerCRC32 is librdkafka's consistent_random (its default, and
	// kcat's): CRC-32 (IEEE) of the key modulo n.
	PartitionerCRC32 Partitioner = "crc32"
	// PartitionerFNV1a is Sarama's and segmentio/kafka-go's Hash: FNV-1a of
	// the key as an int32, modulo n, absolute value.
	PartitionerFNV1a Partitioner = "fnv1a"
	// PartitionerNone trusts the producers: no record is checked.
	PartitionerNone Partitioner = "none"
)

func (p Partitioner) valid() bool {
	switch p {
	case PartitionerMurmur2, PartitionerCRC32, PartitionerFNV1a, PartitionerNone:
		return true
	}
	return false
}

// partition returns the partition of key among n (n > 0); ok is false for
// PartitionerNone.
func (p Partitioner) partition(key string, n int) (part int, ok bool) {
	switch p {
	case PartitionerMurmur2:
		return int(murmur2(key)&0x7fffffff) % n, true
	case PartitionerCRC32:
		return int(crc32.ChecksumIEEE([]byte(key)) % uint32(n)), true
	case PartitionerFNV1a:
		h := uint32(2166136261)
		for i := 0; i < len(key); i++ {
			h = (h ^ uint32(key[i])) * 16777619
		}
		q := int32(h) % int32(n)
		if q < 0 {
			q = -q
		}
		return int(q), true
	}
	return 0, false
}

// murmur2 is Kafka's murmur2 (the Java client's Utils.murmur2).
func murmur2(s string) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(s))
	for len(s) >= 4 {
		k := uint32(s[3])<<24 | uint32(s[2])<<16 | uint32(s[1])<<8 | uint32(s[0])
		s = s[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(s) {
	case 3:
		h ^= uint32(s[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(s[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(s[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// ownership checks that records arrive on their customer's partition.
// Invariant (one owner): a customer's state lives with exactly one input
// partition, the one its records arrive on; a record that arrived on
// another is dead-lettered (ReasonWrongPartition), never aggregated, so that
// no customer's allowance or tiers are ever counted in two places.
type ownership struct {
	partitioner Partitioner
	// counts is each topic's partition count when its state began (as
	// recorded in the checkpoint): a keyed producer placed the customers by
	// it. It is fixed while running.
	counts map[string]int
}

// PartitionCounts returns each topic's partition count in a listing of
// partitions: one more than the highest partition listed.
func PartitionCounts(listed []PartitionID) map[string]int32 {
	counts := make(map[string]int32)
	for _, id := range listed {
		counts[id.Topic] = max(counts[id.Topic], id.Partition+1)
	}
	return counts
}

// recoverPartitionCounts sets up the ownership check: each topic's
// partition count as recorded, or as listed now for a topic first seen
// (recorded by the next checkpoint).
func (e *Engine) recoverPartitionCounts(listed []PartitionID) error {
	recorded, err := e.store.PartitionCounts()
	if err != nil {
		return err
	}
	e.owners = ownership{partitioner: e.cfg.Partitioner, counts: make(map[string]int)}
	e.unrecordedCounts = nil
	if e.cfg.ownershipCounts != nil {
		// A task of a Node: every task checks by the Node's counts, and
		// keeps them in its state (so in its changelog): an instance
		// whose own record differs (a topic grew, a new instance recorded
		// the new count) refuses the task rather than place customers
		// elsewhere than the state did.
		for topic, n := range e.cfg.ownershipCounts {
			r, ok := recorded[topic]
			switch {
			case !ok:
				if e.unrecordedCounts == nil {
					e.unrecordedCounts = make(map[string]int32)
				}
				e.unrecordedCounts[topic] = int32(n)
			case int(r) != n:
				return fmt.Errorf("engine: this task's state placed customers by %d partitions of %s, this instance by %d (recorded in its stateDir/node): instances must agree; give this instance the same record (copy stateDir/node from another), or grow topics only with kafka.repartition", r, topic, n)
			}
		}
		maps.Copy(e.owners.counts, e.cfg.ownershipCounts)
		return nil
	}
	for topic, n := range PartitionCounts(listed) {
		if r, ok := recorded[topic]; ok {
			if r != n {
				e.log.Warn("topic has more partitions than when its state began: customers a keyed producer now places elsewhere are dead-lettered as wrong_partition (see docs/scale-out.md)",
					"topic", topic, "partitions_then", r, "partitions_now", n)
			}
			n = r
		} else {
			if e.unrecordedCounts == nil {
				e.unrecordedCounts = make(map[string]int32)
			}
			e.unrecordedCounts[topic] = n
		}
		e.owners.counts[topic] = int(n)
	}
	return nil
}

// misplaced says why customer's record on id is on the wrong partition, or
// "" if it is where it belongs (or nothing is checked).
func (o *ownership) misplaced(id PartitionID, customer string) string {
	return o.partitioner.Misplaced(id, customer, o.counts[id.Topic])
}

// Misplaced says why a record of customer that arrived on id, of a topic of
// n partitions, is not on its customer's partition; "" if it is, or if
// nothing is checked (PartitionerNone, n unknown).
func (p Partitioner) Misplaced(id PartitionID, customer string, n int) string {
	if n <= 0 {
		return ""
	}
	want, ok := p.partition(customer, n)
	if !ok || int32(want) == id.Partition {
		return ""
	}
	return fmt.Sprintf("customer %q belongs to partition %d of %s (%s of the customer over %d partitions), not %d: "+
		"key usage by customer with that partitioner (kafka.partitioner), or let Tally re-key it (kafka.repartition)",
		customer, want, id.Topic, p, n, id.Partition)
}
