package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func cluster(t testing.TB) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "usage"), kfake.SeedTopics(1, "dead"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func newSource(t *testing.T, brokers []string, topics ...string) *Source {
	t.Helper()
	src, err := NewSource(SourceConfig{ClientConfig: ClientConfig{Brokers: brokers}, Topics: topics, FetchMaxWait: 50 * time.Millisecond},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// produce writes records with a plain (non-transactional) kgo producer.
func produce(t *testing.T, brokers []string, records ...*kgo.Record) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func readN(t *testing.T, r engine.PartitionReader, n int) []engine.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []engine.Record
	for len(out) < n {
		recs, err := r.Fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch after %d records: %v", len(out), err)
		}
		out = append(out, recs...)
	}
	return out
}

func TestSourceReadsPartitionsFromOffsets(t *testing.T) {
	brokers := cluster(t)
	var msgs []*kgo.Record
	for i := range 50 {
		msgs = append(msgs, &kgo.Record{Topic: "usage", Key: []byte("same-key"), Value: []byte(fmt.Sprint(i))})
	}
	produce(t, brokers, msgs...)
	src := newSource(t, brokers, "usage")
	parts, err := src.Partitions(context.Background())
	if err != nil || len(parts) != 2 || parts[0] != (engine.PartitionID{Topic: "usage", Partition: 0}) {
		t.Fatalf("Partitions = %v, %v", parts, err)
	}
	// All 50 share a key, so they are in one partition; find it.
	for _, p := range parts {
		r, _ := src.Open(context.Background(), p, engine.OffsetEarliest)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		recs, _ := r.Fetch(ctx)
		cancel()
		r.Close()
		if len(recs) == 0 {
			continue
		}
		if recs[0].Offset != 0 || string(recs[0].Value) != "0" || recs[0].HighWater != 50 {
			t.Errorf("first record %+v, want offset 0 value 0 high water 50", recs[0])
		}
		// The broker's timestamp comes along, for maxFutureSkew.
		if ts := recs[0].Timestamp; ts.IsZero() || time.Since(ts) > time.Minute {
			t.Errorf("first record's timestamp %v, want the time it was produced", ts)
		}
		// Resume from a checkpointed offset.
		r, _ = src.Open(context.Background(), p, 37)
		got := readN(t, r, 13)
		r.Close()
		for i, rec := range got {
			if rec.Offset != int64(37+i) || string(rec.Value) != fmt.Sprint(37+i) {
				t.Fatalf("record %d = offset %d value %q, want %d", i, rec.Offset, rec.Value, 37+i)
			}
		}
		return
	}
	t.Fatal("no partition held the records")
}

func TestSourceRefusesMissingTopic(t *testing.T) {
	brokers := cluster(t)
	src := newSource(t, brokers, "nope")
	_, err := src.Partitions(context.Background())
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Partitions of a missing topic = %v, want an error naming it", err)
	}
}

func TestSourceReportsDeletedOffsets(t *testing.T) {
	brokers := cluster(t)
	src := newSource(t, brokers, "dead")
	produce(t, brokers, &kgo.Record{Topic: "dead", Value: []byte("x")})
	r, _ := src.Open(context.Background(), engine.PartitionID{Topic: "dead", Partition: 0}, 1000)
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Fetch(ctx); !errors.Is(err, ErrOffsetGone) {
		t.Errorf("Fetch beyond the log = %v, want ErrOffsetGone", err)
	}
}

// TestSourceNeverClampsAnOffset: a partition opened at an offset retention
// has deleted, while the client is still learning its metadata (a second
// topic opened right after a first), is an error, never a silent start at
// the log's first offset.
func TestSourceNeverClampsAnOffset(t *testing.T) {
	brokers := cluster(t)
	var recs []*kgo.Record
	for i := range 10 {
		recs = append(recs, &kgo.Record{Topic: "usage", Partition: 0, Value: []byte(fmt.Sprint(i))})
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	resp, err := kadm.NewClient(cl).DeleteRecords(ctx, kadm.Offsets{"usage": {0: {Topic: "usage", Partition: 0, At: 5}}})
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	src := newSource(t, brokers, "dead", "usage")
	first, _ := src.Open(ctx, engine.PartitionID{Topic: "dead", Partition: 0}, engine.OffsetEarliest)
	defer first.Close()
	// The first open's metadata request is in flight now (kgo then clamped
	// in 8 of 10 runs before the fix).
	time.Sleep(100 * time.Microsecond)
	r, _ := src.Open(ctx, engine.PartitionID{Topic: "usage", Partition: 0}, 2)
	defer r.Close()
	got, err := r.Fetch(ctx)
	if !errors.Is(err, ErrOffsetGone) {
		t.Errorf("Fetch from a deleted offset = %d records from %v, %v; want ErrOffsetGone", len(got), firstOffset(got), err)
	}
}

func firstOffset(recs []engine.Record) any {
	if len(recs) == 0 {
		return "-"
	}
	return recs[0].Offset
}

// TestOriginOf: the repartitioner's headers name where a re-keyed record
// was produced; absent or damaged ones name none (the record is then named
// where it was read).
func TestOriginOf(t *testing.T) {
	h := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	for _, c := range []struct {
		headers []kgo.RecordHeader
		want    engine.Position
	}{
		{nil, engine.Position{}},
		{h(HeaderSourceTopic, "usage", HeaderSourcePartition, "2", HeaderSourceOffset, "41"), engine.Position{Topic: "usage", Partition: 2, Offset: 41}},
		{h("trace", "x", HeaderSourceTopic, "usage", HeaderSourcePartition, "0", HeaderSourceOffset, "0"), engine.Position{Topic: "usage"}},
		{h(HeaderSourceTopic, "usage", HeaderSourcePartition, "2"), engine.Position{}},
		{h(HeaderSourceTopic, "usage", HeaderSourcePartition, "two", HeaderSourceOffset, "41"), engine.Position{}},
		{h(HeaderSourcePartition, "2", HeaderSourceOffset, "41"), engine.Position{}},
		{h(HeaderSourceTopic, "usage", HeaderSourcePartition, "99999999999", HeaderSourceOffset, "41"), engine.Position{}},
	} {
		if got := originOf(c.headers); got != c.want {
			t.Errorf("originOf(%v) = %+v, want %+v", c.headers, got, c.want)
		}
	}
}
