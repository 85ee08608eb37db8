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
	d := NewDecoder(benchMeters(b))
	b.SetBytes(int64(size / len(records)))
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := d.Decode(records[i%len(records)], nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkShardApply measures dedup + aggregation of decoded events in one
// shard, 100K customers, with a barrier every 100K events.
func BenchmarkShardApply(b *testing.B) {
	g := gen.New(2, 100000)
	d := NewDecoder(benchMeters(b))
	events := make([]Event, 0, 100000)
	for i := range cap(events) {
		var err error
		events, err = d.Decode(g.Next(t0.Add(time.Duration(i)*time.Millisecond)).PlainJSON(), events)
		if err != nil {
			b.Fatal(err)
		}
	}
	s := testShard()
	s.meters = d.meters
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

func benchMeters(b *testing.B) *Meters {
	m, err := CompileMeters([]Meter{
		{Name: "voice_seconds", GroupBy: []string{"destination"}},
		{Name: "sms", GroupBy: []string{"destination"}},
		{Name: "data_bytes", GroupBy: []string{"rat"}},
	}, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	return m
}
