package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-billing/tally/connectors/kafka/kafkatest"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// tcpProxy forwards a loopback port to a target; down() makes the target
// unreachable (refused connections, established ones cut) until up().
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]bool
}

func newProxy(t *testing.T, target string) *tcpProxy {
	p := &tcpProxy{addr: freeAddr(t), target: target, conns: make(map[net.Conn]bool)}
	p.up(t)
	t.Cleanup(p.down)
	return p
}

func (p *tcpProxy) up(t *testing.T) {
	var err error
	for range 50 { // the port may linger briefly after down
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			p.mu.Lock()
			p.ln = ln
			p.mu.Unlock()
			go p.serve(ln)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
}

func (p *tcpProxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		backend, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[backend] = true, true
		p.mu.Unlock()
		go func() { _, _ = io.Copy(backend, c); backend.Close() }()
		go func() { _, _ = io.Copy(c, backend); c.Close() }()
	}
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// TestOutages, on partition-owned tasks in a consumer group (the default):
// ClickHouse unreachable for 30 s mid-run; then the transaction
// coordinator failing some changelog commits; then every broker down for
// 10 s (connections refused, open ones cut). During the ClickHouse outage
// the engine keeps consuming until maxUndeliveredCheckpoints, then pauses
// and says so in /readyz and tally_backpressure; a failed changelog commit
// is retried (the checkpoint waits, the process keeps running); the broker
// outage makes the member lose its tasks, which start again from their
// state when it rejoins. Afterwards ClickHouse and the rated topic hold
// every row exactly once, and the graceful stop reports no error.
func TestOutages(t *testing.T) {
	chAddr := clickHouseAddr(t)
	outage := 30 * time.Second
	if testing.Short() {
		outage = 5 * time.Second
	}
	cluster, brokerOutage := outageCluster(t)
	brokers := cluster.ListenAddrs()
	s := makeStream(5, 30000, time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC))
	quarter := len(s.msgs) / 4
	produce(t, brokers, "usage", s.msgs[:quarter])

	proxy := newProxy(t, chAddr)
	database := testDatabase(t)
	cfg := testConfig(t, brokers, proxy.addr, database)
	cfg.MaxUndeliveredCheckpoints = 5
	r := start(t, cfg)
	waitFor(t, 60*time.Second, "ClickHouse to receive rows", func() string {
		got, err := clickHouseTotals(t, chAddr, database)
		if err != nil || len(got) == 0 {
			return "no rows yet"
		}
		return ""
	})

	// ClickHouse goes away; more of the stream arrives.
	proxy.down()
	produce(t, brokers, "usage", s.msgs[quarter:2*quarter])
	waitFor(t, 60*time.Second, "backpressure", func() string {
		err := r.app.engine.Ready()
		if err == nil || !strings.Contains(err.Error(), "failing") && !strings.Contains(err.Error(), "backpressure") {
			return "ready: " + errString(err)
		}
		// One gauge per task: all of them pause.
		if v := metricValues(r.app, "tally_backpressure"); len(v) == 0 || slices.Min(v) != 1 {
			return fmt.Sprintf("tally_backpressure is %v, not 1", v)
		}
		return ""
	})
	// Paused: records produced now wait in Kafka until ClickHouse is back.
	pausedAt := r.app.engine.Stats().Consumed
	produce(t, brokers, "usage", s.msgs[2*quarter:3*quarter])
	time.Sleep(outage)
	if consumed := r.app.engine.Stats().Consumed; consumed != pausedAt || consumed >= uint64(3*quarter) {
		t.Errorf("consumed %d records during the outage after pausing at %d (of %d produced): backpressure did not hold", consumed, pausedAt, 3*quarter)
	}
	if metricSum(r.app, "tally_sink_errors_total") == 0 {
		t.Error("tally_sink_errors_total stayed 0 through the outage")
	}
	proxy.up(t)
	waitFor(t, 90*time.Second, "the engine to catch up after ClickHouse returns", func() string {
		if r.app.engine.Stats().Consumed < uint64(3*quarter) {
			return "still behind"
		}
		if err := r.app.engine.Ready(); err != nil {
			return err.Error()
		}
		return ""
	})

	// The transaction coordinator fails the next changelog commits with
	// UNKNOWN_SERVER_ERROR (kfake rejects them before acting; a client
	// takes the outcome as unknown): the checkpoints wait and retry. A
	// commit that lands but whose answer is lost is TestChangelogAppend-
	// AfterAnOutage's case.
	failed := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.EndTxn}, Err: kerr.UnknownServerError, Count: 4})
	produce(t, brokers, "usage", s.msgs[3*quarter:3*quarter+quarter/2])
	waitFor(t, 60*time.Second, "the failed changelog commits to be retried", func() string {
		if n := failed.Hits(); n < 4 {
			return fmt.Sprintf("%d commits failed", n)
		}
		if metricSum(r.app, "tally_checkpoint_errors_total") == 0 {
			return "tally_checkpoint_errors_total is 0"
		}
		return ""
	})
	select {
	case err := <-r.done:
		t.Fatalf("the engine stopped after failed changelog commits: %v", err)
	default:
	}

	// Every broker goes away; the rest of the stream is produced once they
	// are back.
	cut := brokerOutage.Down()
	time.Sleep(outage / 3)
	if err := brokerOutage.Up(); err != nil {
		t.Fatal(err)
	}
	if cut == 0 {
		t.Error("the broker outage cut no connection")
	}
	produce(t, brokers, "usage", s.msgs[3*quarter+quarter/2:])
	waitFor(t, 120*time.Second, "ClickHouse to hold every row once", clickHouseMatches(t, chAddr, database, s.expected))
	stopGracefully(t, r)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
	checkClickHouseDeadLetters(t, chAddr, database, s)
	t.Logf("ClickHouse outage %s (paused at %d of %d records), %d changelog commits failed, broker outage %s (%d connections cut); totals exact",
		outage, pausedAt, 3*quarter, failed.Hits(), outage/3, cut)
}

// outageCluster is a kfake cluster with the usual topics whose broker the
// test can take down and up again.
func outageCluster(t *testing.T) (*kfake.Cluster, *kafkatest.Outage) {
	outage := new(kafkatest.Outage)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(outage.Listen), kfake.SeedTopics(3, "usage"),
		kfake.SeedTopics(3, "rated-usage"), kfake.SeedTopics(1, "usage-dead-letters"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster, outage
}

func errString(err error) string {
	if err == nil {
		return "ready"
	}
	return err.Error()
}

// metricValues is every series' value of the gauge or counter name.
func metricValues(a *app, name string) []float64 {
	families, err := a.registry.Gather()
	if err != nil {
		return nil
	}
	var out []float64
	for _, f := range families {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				out = append(out, m.GetGauge().GetValue()+m.GetCounter().GetValue())
			}
		}
	}
	return out
}

// TestStopDuringBrokerOutage: a graceful stop asked while every broker is
// down (tasks in a group, their checkpoints bound for the changelog) ends
// within drainTimeout or so instead of waiting for the brokers, saying what
// it could not do; nothing is lost: after the brokers return, the next
// start delivers every row exactly once.
func TestStopDuringBrokerOutage(t *testing.T) {
	chAddr := clickHouseAddr(t)
	cluster, brokerOutage := outageCluster(t)
	brokers := cluster.ListenAddrs()
	s := makeStream(7, 6000, time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC))
	half := len(s.msgs) / 2
	produce(t, brokers, "usage", s.msgs[:half])
	database := testDatabase(t)
	cfg := testConfig(t, brokers, chAddr, database)
	cfg.DrainTimeout = 3 * time.Second
	r := start(t, cfg)
	waitConsumed(t, r, uint64(half), 60*time.Second, "the first half to be read")

	brokerOutage.Down()
	stopAt := time.Now()
	close(r.stop)
	select {
	case err := <-r.done:
		took := time.Since(stopAt)
		t.Logf("stopped %s after the stop was asked, during the outage: %v", took.Round(time.Millisecond), err)
		// The tasks lose their group membership at once, or their final
		// checkpoints time out after drainTimeout: either way no error
		// but the one saying that nothing is lost.
		if err != nil && !strings.Contains(err.Error(), "nothing is lost") {
			t.Errorf("the stop's error does not say that nothing is lost: %v", err)
		}
		// drainTimeout for the final checkpoint and as much for the sinks,
		// the sinks' progress (5 s) and the group leave (5 s) at most, and
		// some slack.
		if limit := 2*cfg.DrainTimeout + 15*time.Second; took > limit {
			t.Errorf("the stop took %s, more than %s", took.Round(time.Millisecond), limit)
		}
	case <-time.After(60 * time.Second):
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1) // where it waits
		t.Fatal("a graceful stop during a broker outage did not end within 60 s (drainTimeout 3 s)")
	}
	if err := brokerOutage.Up(); err != nil {
		t.Fatal(err)
	}
	produce(t, brokers, "usage", s.msgs[half:])
	r = start(t, cfg)
	waitFor(t, 120*time.Second, "ClickHouse to hold every row once", clickHouseMatches(t, chAddr, database, s.expected))
	stopGracefully(t, r)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
}
