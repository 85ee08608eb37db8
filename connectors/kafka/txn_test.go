package kafka

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kgo"
)

// produceTransactions writes to usage/0, in this order: plain records,
// a committed transaction, an aborted one, plain records, another
// committed one, another aborted one (the partition then ends with an
// abort marker). It returns the values a read-committed reader must see.
func produceTransactions(t *testing.T, brokers []string) (committed []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plain, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	txn, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.TransactionalID("test-producer"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	n := 0
	rec := func(kind string) *kgo.Record {
		n++
		return &kgo.Record{Topic: "usage", Partition: 0, Value: []byte(fmt.Sprintf("%s-%d", kind, n))}
	}
	writePlain := func(k int) {
		for range k {
			r := rec("plain")
			if err := plain.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
			committed = append(committed, string(r.Value))
		}
	}
	transaction := func(k int, commit bool) {
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		kind := "aborted"
		if commit {
			kind = "committed"
		}
		var values []string
		for range k {
			r := rec(kind)
			if err := txn.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
			values = append(values, string(r.Value))
		}
		if err := txn.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
		if commit {
			committed = append(committed, values...)
		}
	}
	writePlain(3)
	transaction(4, true)
	transaction(5, false)
	writePlain(2)
	transaction(3, true)
	transaction(2, false)
	return committed
}

// TestSourceReadsCommitted: records of aborted transactions never come,
// markers come as control records only, and the reader's position reaches
// the end of a partition whose last record is a marker (so the engine sees
// it caught up). ReadToEnd, which audits use, reads the same.
func TestSourceReadsCommitted(t *testing.T) {
	brokers := cluster(t)
	want := produceTransactions(t, brokers)
	src := newSource(t, brokers, "usage")
	r, err := src.Open(context.Background(), engine.PartitionID{Topic: "usage", Partition: 0}, engine.OffsetEarliest)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	var last engine.Record
	markers := 0
	for last.Offset+1 < last.HighWater || last.HighWater == 0 {
		recs, err := r.Fetch(ctx)
		if err != nil {
			t.Fatalf("Fetch after %d records (at %d of %d): %v", len(got), last.Offset, last.HighWater, err)
		}
		for _, rec := range recs {
			if rec.Control {
				markers++
			} else {
				got = append(got, string(rec.Value))
			}
			last = rec
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("read committed got\n%q\nwant\n%q", got, want)
	}
	if markers != 4 {
		t.Errorf("%d control records, want 4 (one per transaction)", markers)
	}

	r.Close()
	var all []string
	err = src.ReadToEnd(ctx, func(p engine.PartitionID, rec engine.Record) error {
		if rec.Control {
			t.Errorf("ReadToEnd passed on a marker at %d", rec.Offset)
		}
		all = append(all, string(rec.Value))
		return nil
	})
	if err != nil || !slices.Equal(all, want) {
		t.Errorf("ReadToEnd = %q, %v; want %q", all, err, want)
	}
}

// TestSourceReadUncommittedSeesAborted shows the test above can tell: read
// uncommitted, the aborted records come too.
func TestSourceReadUncommittedSeesAborted(t *testing.T) {
	brokers := cluster(t)
	want := produceTransactions(t, brokers)
	src, err := NewSource(SourceConfig{ClientConfig: ClientConfig{Brokers: brokers}, Topics: []string{"usage"}, ReadUncommitted: true},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	var all []string
	err = src.ReadToEnd(context.Background(), func(p engine.PartitionID, rec engine.Record) error {
		all = append(all, string(rec.Value))
		return nil
	})
	if err != nil || len(all) != len(want)+7 {
		t.Errorf("read uncommitted: %d records (%v), want %d", len(all), err, len(want)+7)
	}
}

// TestReadToEndBehindOpenTransaction: records of an aborted transaction
// whose marker lies past the end (behind another transaction still open)
// never come; ReadToEnd ends anyway, with the committed records.
func TestReadToEndBehindOpenTransaction(t *testing.T) {
	brokers := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	newTxn := func(id string) *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.TransactionalID(id))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	rec := func(v string) *kgo.Record { return &kgo.Record{Topic: "usage", Partition: 0, Value: []byte(v)} }
	produce(t, brokers, &kgo.Record{Topic: "usage", Partition: 0, Value: []byte("plain-0")}, &kgo.Record{Topic: "usage", Partition: 0, Value: []byte("plain-1")})
	d, a := newTxn("d"), newTxn("a")
	if err := d.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := d.ProduceSync(ctx, rec("aborted-2"), rec("aborted-3")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := a.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := a.ProduceSync(ctx, rec("open-4")).FirstErr(); err != nil {
		t.Fatal(err)
	}
	if err := d.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	src := newSource(t, brokers, "usage")
	var got []string
	// Well before the open transaction times out (kgo's default 40s), whose
	// abort would end the read anyway.
	readCtx, cancelRead := context.WithTimeout(ctx, 20*time.Second)
	defer cancelRead()
	err := src.ReadToEnd(readCtx, func(p engine.PartitionID, r engine.Record) error {
		got = append(got, string(r.Value))
		return nil
	})
	if err != nil || !slices.Equal(got, []string{"plain-0", "plain-1"}) {
		t.Errorf("ReadToEnd = %q, %v; want the two plain records", got, err)
	}
}
