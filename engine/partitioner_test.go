package engine

import (
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestPartitionersMatchClients: the partition Tally expects for a key is
// the one the clients' own partitioners choose: franz-go's default
// (Kafka's Java murmur2), and franz-go's implementations of librdkafka's
// consistent partitioner and Sarama's.
func TestPartitionersMatchClients(t *testing.T) {
	fnv32a := func(b []byte) uint32 {
		h := fnv.New32a()
		h.Write(b)
		return h.Sum32()
	}
	clients := map[Partitioner]func(key []byte, n int) int{
		PartitionerMurmur2: func(key []byte, n int) int {
			return kgo.StickyKeyPartitioner(nil).ForTopic("usage").Partition(&kgo.Record{Key: key}, n)
		},
		PartitionerCRC32: kgo.SaramaHasher(crc32.ChecksumIEEE),
		PartitionerFNV1a: kgo.SaramaCompatHasher(fnv32a),
	}
	for p, client := range clients {
		for _, n := range []int{1, 3, 4, 7, 64} {
			for i := range 2000 {
				key := fmt.Sprintf("sub-%06d", i*7919%1_000_000)
				got, _ := p.partition(key, n)
				if want := client([]byte(key), n); got != want {
					t.Fatalf("%s: %q over %d partitions: %d, the client says %d", p, key, n, got, want)
				}
			}
		}
	}
	if _, ok := PartitionerNone.partition("x", 4); ok {
		t.Error("none checks nothing")
	}
}

// TestWrongPartitionAfterGrowth: a topic that grows from 2 to 4 partitions
// keeps being checked against the 2 its state began with (recorded in the
// checkpoint): a customer a keyed producer now places on a new partition is
// dead-lettered, never given a second state.
func TestWrongPartitionAfterGrowth(t *testing.T) {
	h := newHarness(t, 2)
	h.cfg.Partitioner = PartitionerMurmur2
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	h.meters = meters
	h.start()
	rec := func(id int, customer string) []byte {
		return []byte(fmt.Sprintf(`{"id":"%d","customer":%q,"meter":"sms","time":"2026-03-01T10:00:00Z"}`, id, customer))
	}
	// Find a customer whose partition is 0 of 2 and 2 of 4.
	customer := ""
	for i := 0; customer == ""; i++ {
		c := fmt.Sprintf("sub-%d", i)
		p2, _ := PartitionerMurmur2.partition(c, 2)
		p4, _ := PartitionerMurmur2.partition(c, 4)
		if p2 == 0 && p4 == 2 {
			customer = c
		}
	}
	h.src.append(0, rec(1, customer))
	h.checkpoint(false)
	h.stop()

	h.src.mu.Lock()
	h.src.parts = append(h.src.parts, nil, nil)
	h.src.mu.Unlock()
	h.start()
	defer h.cancel()
	h.src.append(2, rec(2, customer)) // where a producer now puts it
	h.src.append(0, rec(3, customer)) // its home
	h.checkpoint(false)
	var dead []string
	for _, l := range h.sink.letters {
		dead = append(dead, fmt.Sprintf("%s %s/%d@%d", l.Reason, l.Topic, l.Partition, l.Offset))
	}
	if len(dead) != 1 || dead[0] != "wrong_partition usage/2@0" {
		t.Errorf("dead letters %v, want the record on partition 2 only", dead)
	}
}
