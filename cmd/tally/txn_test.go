package main

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// produceTransactional writes good's records, in order, some plain and some
// in committed transactions, with transactions of junk's records aborted
// between them; the stream ends with an aborted transaction. It returns how
// many transactions it committed and aborted.
func produceTransactional(t *testing.T, brokers []string, seed uint64, good, junk [][2]string) (committed, aborted int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	plain, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	txn, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"), kgo.TransactionalID("billing-mediation"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	records := func(msgs [][2]string) []*kgo.Record {
		out := make([]*kgo.Record, len(msgs))
		for i, m := range msgs {
			out[i] = &kgo.Record{Key: []byte(m[0]), Value: []byte(m[1])}
		}
		return out
	}
	transaction := func(msgs [][2]string, commit bool) {
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := txn.ProduceSync(ctx, records(msgs)...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := txn.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
		if commit {
			committed++
		} else {
			aborted++
		}
	}
	rng := rand.New(rand.NewPCG(seed, 3))
	abortJunk := func() {
		n := min(len(junk), 1+rng.IntN(60))
		transaction(junk[:n], false)
		junk = junk[n:]
	}
	for len(good) > 0 {
		n := min(len(good), 1+rng.IntN(150))
		chunk := good[:n]
		good = good[n:]
		if rng.IntN(2) == 0 {
			if err := plain.ProduceSync(ctx, records(chunk)...).FirstErr(); err != nil {
				t.Fatal(err)
			}
		} else {
			transaction(chunk, true)
		}
		if len(junk) > 0 && rng.IntN(3) == 0 {
			abortJunk()
		}
	}
	abortJunk()
	return committed, aborted
}

// TestTransactionalInput: a mediation system writes usage with a
// transactional producer, committing some transactions and aborting
// others, between plain records. Tally bills the committed and plain
// records only, dead-letters no marker, and tally audit, re-reading the
// topic, agrees. The aborted records are a stream of their own (other ids,
// malformed records too), so billing or dead-lettering any of them shows.
func TestTransactionalInput(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 3)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	good := makeStream(21, 6000, base)
	junk := makeStream(22, 2000, base)
	committed, aborted := produceTransactional(t, brokers, 21, good.msgs, junk.msgs)
	t.Logf("%d records, %d committed and %d aborted transactions", len(good.msgs), committed, aborted)

	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	r := start(t, cfg)
	waitFor(t, 90*time.Second, "ClickHouse to hold the committed records' totals", clickHouseMatches(t, chAddr, database, good.expected))
	stopGracefully(t, r)
	if d := diff(good.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
	checkDeadLetters(t, brokers, good)
	checkClickHouseDeadLetters(t, chAddr, database, good)
	if st := r.app.engine.Stats(); st.Consumed != uint64(len(good.msgs)) {
		t.Errorf("engine consumed %d records, want the %d plain and committed ones", st.Consumed, len(good.msgs))
	}

	config := filepath.Join(t.TempDir(), "tally.yaml")
	plan, _ := filepath.Abs(cfg.Plan)
	err := os.WriteFile(config, []byte(fmt.Sprintf("plan: %s\nkafka:\n  brokers: [%s]\nclickhouse:\n  addr: %s\n  database: %s\n",
		plan, strings.Join(brokers, ", "), chAddr, database)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err = runAudit(context.Background(), []string{"--config", config, "--from", base.Add(-time.Hour).Format(time.RFC3339),
		"--to", base.Add(time.Hour).Format(time.RFC3339)}, &out, &errOut, quietLog())
	if report := out.String() + errOut.String(); err != nil || !strings.Contains(report, " 0 discrepancies") {
		t.Errorf("audit of a transactional topic: %v\n%s", err, report)
	}
}
