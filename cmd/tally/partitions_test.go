package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func adminClient(t *testing.T, brokers []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// produceTo writes msgs to the given partitions of usage, each customer
// always to the same one of them.
func produceTo(t *testing.T, brokers []string, partitions []int32, msgs [][2]string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	records := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		h := 0
		for _, c := range m[0] {
			h = h*31 + int(c)
		}
		records[i] = &kgo.Record{Key: []byte(m[0]), Value: []byte(m[1]), Partition: partitions[(h&0xffff)%len(partitions)]}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// metricLabels returns the label sets of a metric's samples, as
// "name=value,..." strings.
func metricLabels(a *app, name string) []string {
	families, _ := a.registry.Gather()
	var out []string
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var parts []string
			for _, l := range m.GetLabel() {
				parts = append(parts, l.GetName()+"="+l.GetValue())
			}
			out = append(out, strings.Join(parts, ","))
		}
	}
	return out
}

// TestPartitionsAddedWhileRunning: a topic grows from 2 to 4 partitions
// while Tally runs; the new ones are read from their first offset within
// the metadata interval and their lag is reported. The producer here puts
// customers on the new partitions, so the ownership check is off
// (kafka.partitioner none: the operator vouches that no customer is on two
// partitions); TestGrownTopicMovedCustomers has it on.
func TestPartitionsAddedWhileRunning(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 2)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(31, 4000, base)
	half := len(s.msgs) / 2
	produceTo(t, brokers, []int32{0, 1}, s.msgs[:half])

	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.Kafka.MetadataInterval = 200 * time.Millisecond
	cfg.Kafka.Partitioner = "none"
	r := start(t, cfg)
	waitConsumed(t, r, uint64(half), 30*time.Second, "the first half to be read")
	if _, err := adminClient(t, brokers).CreatePartitions(context.Background(), 2, "usage"); err != nil {
		t.Fatal(err)
	}
	// Records of the second half go only to the new partitions; produced
	// before the engine could have seen them, they are read from offset 0.
	produceTo(t, brokers, []int32{2, 3}, s.msgs[half:])
	waitFor(t, 60*time.Second, "ClickHouse to hold every record's totals", clickHouseMatches(t, chAddr, database, s.expected))
	labels := strings.Join(metricLabels(r.app, "tally_consumer_lag_records"), " ")
	for _, want := range []string{"partition=2,topic=usage", "partition=3,topic=usage"} {
		if !strings.Contains(labels, want) {
			t.Errorf("tally_consumer_lag_records has no sample %s: %s", want, labels)
		}
	}
	stopGracefully(t, r)
	if c := r.app.engine.Stats().Consumed; c != uint64(len(s.msgs)) {
		t.Errorf("consumed %d records, produced %d", c, len(s.msgs))
	}
}

// TestGrownTopicMovedCustomers: with the ownership check on (the default),
// a topic grown from 2 to 4 partitions under a keyed producer (Kafka's
// default partitioner) moves some customers to the new partitions; their
// records there are dead-lettered as wrong_partition, every one, and the
// rest is billed.
func TestGrownTopicMovedCustomers(t *testing.T) {
	brokers := startKafka(t, 2)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(35, 3000, base)
	half := len(s.msgs) / 2
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	send := func(msgs [][2]string) kgo.ProduceResults {
		records := make([]*kgo.Record, len(msgs))
		for i, m := range msgs {
			records[i] = &kgo.Record{Key: []byte(m[0]), Value: []byte(m[1])}
		}
		results := cl.ProduceSync(context.Background(), records...)
		if err := results.FirstErr(); err != nil {
			t.Fatal(err)
		}
		return results
	}
	send(s.msgs[:half])
	cfg := testConfig(t, brokers, "", "")
	cfg.Kafka.MetadataInterval = 200 * time.Millisecond
	r := start(t, cfg)
	waitConsumed(t, r, uint64(half), 30*time.Second, "the first half to be read")
	if _, err := adminClient(t, brokers).CreatePartitions(context.Background(), 2, "usage"); err != nil {
		t.Fatal(err)
	}
	// The producer learns of the new partitions and places by 4 from now.
	waitFor(t, 10*time.Second, "the producer to see 4 partitions", func() string {
		cl.ForceMetadataRefresh()
		if res := send([][2]string{{"probe", "not json"}}); res[0].Record.Partition < 2 {
			return "still 2"
		}
		return ""
	})
	moved := 0
	for _, res := range send(s.msgs[half:]) {
		if res.Record.Partition >= 2 && !s.malformed[string(res.Record.Value)] {
			moved++
		}
	}
	waitConsumed(t, r, uint64(len(s.msgs)), 30*time.Second, "every record to be read")
	stopGracefully(t, r)
	wrong := 0
	for _, m := range consume(t, brokers, "usage-dead-letters") {
		if strings.Contains(m.headers, "tally-reason=wrong_partition") {
			wrong++
			if !strings.Contains(m.key, "usage/2/") && !strings.Contains(m.key, "usage/3/") {
				t.Errorf("wrong_partition dead letter %s is not on a new partition", m.key)
			}
		}
	}
	if moved == 0 || wrong != moved {
		t.Errorf("%d wrong_partition dead letters, want the %d well-formed records the producer put on the new partitions", wrong, moved)
	}
}

// recreateUsage deletes the usage topic and creates it again.
func recreateUsage(t *testing.T, brokers []string, partitions int32) {
	t.Helper()
	adm := adminClient(t, brokers)
	ctx := context.Background()
	if _, err := adm.DeleteTopics(ctx, "usage"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "usage to be created again", func() string {
		resp, err := adm.CreateTopic(ctx, partitions, -1, nil, "usage")
		if err == nil {
			err = resp.Err
		}
		if err != nil {
			return err.Error()
		}
		return ""
	})
}

// TestRecreatedTopicRefused: a usage topic deleted and created again under
// its name is not read from the old topic's offsets: at start Tally refuses,
// naming the topic; while running, it stops.
func TestRecreatedTopicRefused(t *testing.T) {
	brokers := startKafka(t, 2)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(32, 500, base)
	produce(t, brokers, "usage", s.msgs)
	cfg := testConfig(t, brokers, "", "")
	cfg.Kafka.MetadataInterval = 200 * time.Millisecond
	r := start(t, cfg)
	waitConsumed(t, r, uint64(len(s.msgs)), 30*time.Second, "the records to be read")
	stopGracefully(t, r)

	recreateUsage(t, brokers, 2)
	produce(t, brokers, "usage", s.msgs[:10])
	r = start(t, cfg)
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), `topic "usage" was deleted and created again`) || !strings.Contains(err.Error(), "stateDir") {
			t.Errorf("start on a recreated topic: %v", err)
		}
	case <-time.After(30 * time.Second):
		close(r.stop)
		<-r.done
		t.Fatal("Tally kept running on a recreated topic")
	}

	// While running: a fresh state reads the new topic, which is then
	// recreated once more. Tasks keep their state in the changelog too.
	cfg.StateDir = t.TempDir()
	cfg.Kafka.ChangelogTopic = "fresh-changelog"
	r = start(t, cfg)
	waitConsumed(t, r, 10, 30*time.Second, "the new topic to be read")
	recreateUsage(t, brokers, 2)
	select {
	case err := <-r.done:
		if err == nil || !strings.Contains(err.Error(), "usage") {
			t.Errorf("Tally running when its topic was recreated stopped with %v, want an error naming the topic", err)
		}
	case <-time.After(30 * time.Second):
		close(r.stop)
		<-r.done
		t.Fatal("Tally kept running when its topic was recreated")
	}
}

// TestDeletedStartReported: records deleted by retention before Tally
// first read a partition are said in the log, a metric and /readyz, and
// the rest is read.
func TestDeletedStartReported(t *testing.T) {
	brokers := startKafka(t, 1)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(33, 100, base)
	produce(t, brokers, "usage", s.msgs)
	adm := adminClient(t, brokers)
	resp, err := adm.DeleteRecords(context.Background(), kadm.Offsets{"usage": {0: {Topic: "usage", Partition: 0, At: 40}}})
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, brokers, "", "")
	r := start(t, cfg)
	waitConsumed(t, r, uint64(len(s.msgs)-40), 30*time.Second, "the rest to be read")
	rec := httptest.NewRecorder()
	r.app.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	if body := rec.Body.String(); !strings.Contains(body, "warning: usage/0: offsets 0..39 were deleted by retention before Tally read them") {
		t.Errorf("/readyz = %d %q, want a warning about offsets 0..39", rec.Code, body)
	}
	if got := metricSum(r.app, "tally_source_unread_offsets"); got != 40 {
		t.Errorf("tally_source_unread_offsets = %v, want 40", got)
	}
	stopGracefully(t, r)
}

// TestOutputTopicsCreated: missing output topics are created with the
// configured partitions; one that cannot be created fails the start
// naming its key.
func TestOutputTopicsCreated(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, "usage"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	cfg := testConfig(t, brokers, "", "")
	cfg.Kafka.TopicPartitions = 3
	cfg.Kafka.TopicReplication = 3 // one broker: cannot be
	_, err = build(context.Background(), cfg, quietLog())
	if err == nil || !strings.Contains(err.Error(), "config key kafka.deadLetterTopic") || !strings.Contains(err.Error(), "could not be created") {
		t.Errorf("build with an impossible replication factor: %v", err)
	}
	cfg.Kafka.TopicReplication = -1
	a, err := build(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	a.close()
	details, err := adminClient(t, brokers).ListTopics(context.Background(), cfg.Kafka.RatedTopic, cfg.Kafka.DeadLetterTopic)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{cfg.Kafka.RatedTopic, cfg.Kafka.DeadLetterTopic} {
		if d := details[topic]; d.Err != nil || len(d.Partitions) != 3 {
			t.Errorf("topic %s: %d partitions (%v), want created with 3", topic, len(d.Partitions), d.Err)
		}
	}
}

// TestDrainTimeoutBoundsStop: a sink that never succeeds does not hold a
// graceful stop past drainTimeout; its rows stay in the outbox and reach
// the sink after the next start.
func TestDrainTimeoutBoundsStop(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 2)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(34, 2000, base)
	produce(t, brokers, "usage", s.msgs)
	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.DrainTimeout = time.Second
	cfg.Kafka.RatedTopic = ""
	r := start(t, cfg, func(*running) buildOption {
		return func(o *buildOptions) {
			o.wrapSink = func(sink engine.Sink) engine.Sink { return failingSink{name: sink.Name()} }
		}
	})
	waitConsumed(t, r, uint64(len(s.msgs)), 30*time.Second, "the records to be read")
	stopAt := time.Now()
	close(r.stop)
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("stop with a failing sink: %v", err)
		}
		t.Logf("stopped %s after the stop was asked", time.Since(stopAt).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("a graceful stop with a failing sink did not end")
	}
	r = start(t, cfg)
	waitFor(t, 60*time.Second, "ClickHouse to hold the outbox's rows after restart", clickHouseMatches(t, chAddr, database, s.expected))
	close(r.stop)
	<-r.done
}

// failingSink never succeeds; it has the name of the sink it replaces, so
// that its undelivered rows are the ones the real sink owes after restart.
type failingSink struct{ name string }

func (f failingSink) Name() string { return f.name }

func (failingSink) Write(context.Context, []engine.RatedRow) error {
	return errors.New("sink is down")
}

// TestLostMachineRestoresFromChangelog: partition-owned tasks
// (scaleOut: local) lose their machine, state folder and all, after
// retention deleted the records they had read: everything comes back from
// the changelog, and the records that follow land on top of it exactly.
func TestLostMachineRestoresFromChangelog(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 3)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	first, second := makeStream(41, 3000, base), makeStream(42, 3000, base)
	produce(t, brokers, "usage", first.msgs)
	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.ScaleOut = scaleOutLocal
	r := start(t, cfg)
	waitFor(t, 60*time.Second, "the first stream in ClickHouse", clickHouseMatches(t, chAddr, database, first.expected))
	stopGracefully(t, r)

	// Retention deletes everything read so far, and the machine is lost.
	adm := adminClient(t, brokers)
	ends, err := adm.ListEndOffsets(context.Background(), "usage")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := adm.DeleteRecords(context.Background(), ends.Offsets())
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		t.Fatal(err)
	}

	produce(t, brokers, "usage", second.msgs)
	want := make(map[string]total)
	for _, s := range []*stream{first, second} {
		for k, v := range s.expected {
			w, ok := want[k]
			if !ok {
				w.quantity = decimal.Zero
			}
			w.quantity = w.quantity.Add(v.quantity)
			w.count += v.count
			want[k] = w
		}
	}
	for k, w := range want {
		w.amount = w.quantity.Mul(prices[k[:strings.IndexByte(k, '|')]]).RoundBank(6)
		want[k] = w
	}
	r = start(t, cfg)
	waitFor(t, 60*time.Second, "both streams in ClickHouse", clickHouseMatches(t, chAddr, database, want))
	if w := r.app.engine.Warnings(); len(w) > 0 {
		t.Errorf("warnings after the restore: %v", w)
	}
	stopGracefully(t, r)
}

// TestRepartitionUnkeyedInput: producers that do not key usage by customer
// (records spread over partitions at random) are billed exactly with
// kafka.repartition: Tally re-keys them by customer, exactly once, through
// its internal topic, and its tasks read that.
func TestRepartitionUnkeyedInput(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 3)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(61, 6000, base)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	records := make([]*kgo.Record, len(s.msgs))
	for i, m := range s.msgs {
		records[i] = &kgo.Record{Key: []byte(m[0]), Value: []byte(m[1]), Partition: int32(i % 3)} // not by customer
	}
	if err := cl.ProduceSync(context.Background(), records...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.ScaleOut = scaleOutLocal
	cfg.Kafka.Repartition = true
	r := start(t, cfg)
	waitFor(t, 90*time.Second, "ClickHouse to hold the stream's totals", clickHouseMatches(t, chAddr, database, s.expected))
	// A second process on the same state folder is refused before its
	// repartition stage joins that stage's group (under the folder's
	// transactional id, which would fence the running one's stage).
	adm := adminClient(t, brokers)
	stage := describeGroup(t, adm, "tally-default-repartition")
	if _, err := build(context.Background(), cfg, quietLog()); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("a second instance on the same stateDir: %v, want a refusal", err)
	}
	if g := describeGroup(t, adm, "tally-default-repartition"); len(stage.Members) != 1 || len(g.Members) != 1 || g.Members[0].MemberID != stage.Members[0].MemberID {
		t.Errorf("repartition group members %+v, then %+v after the refused start; want the one running member", stage.Members, g.Members)
	}
	stopGracefully(t, r)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
	checkDeadLetters(t, brokers, s)
	// Each dead letter names where its record was produced (the usage
	// topic), not where the tasks read it (the repartition topic).
	produced := make(map[string][]string) // value -> positions
	for _, r := range records {
		produced[string(r.Value)] = append(produced[string(r.Value)], fmt.Sprintf("usage/%d/%d", r.Partition, r.Offset))
	}
	for _, m := range consume(t, brokers, "usage-dead-letters") {
		if !slices.Contains(produced[m.value], m.key) {
			t.Errorf("dead letter at %s, want where its record was produced: %v", m.key, produced[m.value])
		}
	}
}

// waitConsumed waits until r consumed at least n records.
func waitConsumed(t *testing.T, r *running, n uint64, timeout time.Duration, what string) {
	t.Helper()
	waitFor(t, timeout, what, func() string {
		if c := r.app.engine.Stats().Consumed; c < n {
			return "consumed " + strconv.FormatUint(c, 10)
		}
		return ""
	})
}

// stopGracefully stops r as SIGTERM would and fails on its error.
func stopGracefully(t *testing.T, r *running) {
	t.Helper()
	close(r.stop)
	if err := <-r.done; err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
}
