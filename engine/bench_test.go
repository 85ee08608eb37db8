package engine

import (
	"fmt"
	"testing"
	"time"

	"github.com/tally-billing/tally/bench/gen"
)

func BenchmarkDecode(b *testing.B) {
	g := gen.New(1, 10000)
	records := make([][]byte, 1024)
	size := 0
	for i := range records {
		u := g.Next(t0)
		if i%2 == 0 {
			records[i] = u.PlainJSON()
		} else {
			records[i] = u.CloudEventJSON()
		}
		size += len(records[i])
	}
	d := NewDecoder(func(string) bool { return true })
	b.SetBytes(int64(size / len(records)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := d.Decode(records[i%len(records)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkShardApply measures dedup + aggregation of decoded events in one
// shard, 100K customers, with a barrier every 100K events.
func BenchmarkShardApply(b *testing.B) {
	g := gen.New(2, 100000)
	d := NewDecoder(func(string) bool { return true })
	events := make([]Event, 100000)
	for i := range events {
		ev, err := d.Decode(g.Next(t0.Add(time.Duration(i) * time.Millisecond)).PlainJSON())
		if err != nil {
			b.Fatal(err)
		}
		events[i] = ev
	}
	s := testShard()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ev := events[i%len(events)]
		ev.ID = fmt.Sprint(i) // every event new: measures the dedup insert too
		s.apply(&ev)
		if i%len(events) == len(events)-1 {
			s.snapshot(&barrier{watermarkNs: s.watermarkNs})
		}
	}
}
