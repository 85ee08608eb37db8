package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tally-billing/tally/state"
)

func nodeConfig() NodeConfig {
	cfg := DefaultConfig()
	cfg.CheckpointInterval = 20 * time.Millisecond
	cfg.AllowedLateness = 0
	cfg.IdleTimeout = 200 * time.Millisecond
	cfg.Shards = 1
	return NodeConfig{Engine: cfg}
}

// TestNodeTasks: each partition is a task with its own state folder; each
// customer is counted in its own task only, a record on another partition
// is dead-lettered, the live API finds a customer in its task, and a
// restart resumes every task where it was.
func TestNodeTasks(t *testing.T) {
	src := newMemSource(3)
	sink := &captureSink{}
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg := nodeConfig()
	cfg.StateDir = t.TempDir()
	want := make(map[string]int)
	id := 0
	add := func(customer string, partition int, at string) {
		id++
		src.append(partition, []byte(fmt.Sprintf(`{"id":"%d","customer":%q,"meter":"sms","time":"2026-03-01T%sZ"}`, id, customer, at)))
	}
	for i := range 40 {
		c := fmt.Sprintf("sub-%d", i)
		p, _ := PartitionerMurmur2.partition(c, 3)
		for range 1 + i%3 {
			add(c, p, "10:00:10")
			want[c]++
		}
	}
	wrong, _ := PartitionerMurmur2.partition("sub-0", 3)
	add("sub-0", (wrong+1)%3, "10:00:20") // on another partition than its customer's
	// One record per partition at 10:05 closes the 10:00 windows.
	closed := make(map[int]bool)
	for i := 0; len(closed) < 3; i++ {
		c := fmt.Sprintf("closer-%d", i)
		if p, _ := PartitionerMurmur2.partition(c, 3); !closed[p] {
			closed[p] = true
			add(c, p, "10:05:00")
		}
	}
	total := id

	run := func() (*Node, chan error) { return runNode(t, cfg, src, meters, sink) }
	n, done := run()
	waitUntil(t, "every record", func() bool { return n.Stats().Consumed == uint64(total) })
	u, err := n.Usage(context.Background(), UsageRequest{Customer: "sub-7", Windows: true})
	if err != nil || len(u.Windows) != 1 || u.Windows[0].Count != uint64(want["sub-7"]) {
		t.Errorf("Usage of sub-7 from its task = %+v, %v; want one window of %d", u.Windows, err, want["sub-7"])
	}
	n.Shutdown()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for p := range 3 {
		if _, err := os.Stat(filepath.Join(cfg.StateDir, "tasks", fmt.Sprint(p))); err != nil {
			t.Errorf("task %d has no state folder: %v", p, err)
		}
	}
	got := make(map[string]int)
	for _, r := range sink.rows {
		if r.Final && !strings.HasPrefix(r.Customer, "closer-") {
			got[r.Customer] += int(r.Count)
		}
	}
	for c, k := range want {
		if got[c] != k {
			t.Errorf("%s: %d counted in final rows, want %d", c, got[c], k)
		}
	}
	if len(sink.letters) != 1 || sink.letters[0].Reason != ReasonWrongPartition {
		t.Errorf("dead letters %+v, want the one record on the wrong partition", sink.letters)
	}

	// A restart resumes each task from its own checkpoint: nothing is read
	// or emitted again.
	rows := len(sink.rows)
	n, done = run()
	waitUntil(t, "the tasks to start", func() bool { return n.Ready() == nil })
	time.Sleep(100 * time.Millisecond)
	n.Shutdown()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c := n.Stats().Consumed; c != 0 {
		t.Errorf("after a restart %d records were read again", c)
	}
	for _, r := range sink.rows[rows:] {
		if r.Final {
			t.Errorf("after a restart a final row came again: %s rev %d", r.Identity(), r.Revision)
		}
	}
}

// TestNodeRefusesSingleEngineState: a state folder written with one engine
// for every partition stays with it.
func TestNodeRefusesSingleEngineState(t *testing.T) {
	dir := t.TempDir()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	store.Close()
	cfg := nodeConfig()
	cfg.StateDir = dir
	meters, _ := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	n, err := NewNode(cfg, newMemSource(2), NewDecoder(meters), halfRater{}, []Sink{&captureSink{}}, []DeadLetterSink{captureDead{&captureSink{}}},
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	err = n.Run(context.Background())
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Key != "stateDir" || !strings.Contains(err.Error(), "scaleOut: off") {
		t.Errorf("Run on a single-engine state folder = %v, want a stateDir error", err)
	}
}

// TestNodeTaskMovedDuringChangelogOutage: the group moves a task away
// while its changelog is out of reach. The task's final checkpoint waits
// DrainTimeout, then the task goes without it (its next owner restores the
// last committed one); the Node keeps running its other tasks.
func TestNodeTaskMovedDuringChangelogOutage(t *testing.T) {
	src := newMemSource(2)
	meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for p := range 2 {
		src.append(p, []byte(fmt.Sprintf(`{"id":"%d","customer":"c%d","meter":"sms","time":"2026-03-01T10:00:00Z"}`, p, p)))
	}
	cfg := nodeConfig()
	cfg.StateDir = t.TempDir()
	cfg.Engine.DrainTimeout = 300 * time.Millisecond
	changelogs := &outageChangelogs{}
	group := &fakeGroup{}
	cfg.Changelogs, cfg.Membership = changelogs, group
	n, done := runNode(t, cfg, src, meters, &captureSink{})
	waitUntil(t, "both tasks", func() bool {
		select {
		case err := <-done:
			t.Fatalf("the Node stopped: %v", err)
		default:
		}
		return n.Stats().Consumed == 2 && n.Ready() == nil
	})

	changelogs.down.Store(true)
	revoked := make(chan struct{})
	start := time.Now()
	go func() { group.revoked([]int32{0}); close(revoked) }()
	select {
	case <-revoked:
		t.Logf("task 0 moved %s after the revocation, without its final checkpoint", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the revocation waited for the changelog past DrainTimeout")
	}
	select {
	case err := <-done:
		t.Fatalf("the Node stopped when a task moved without its final checkpoint: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if n.Ready() == nil || !strings.Contains(n.Ready().Error(), "changelog") {
		t.Errorf("readiness with task 1's checkpoints waiting for the changelog: %v", n.Ready())
	}
	changelogs.down.Store(false)
	n.Shutdown()
	if err := <-done; err != nil {
		t.Fatalf("graceful stop once the changelog is back: %v", err)
	}
}

// runNode starts a Node on src that rates by halfRater into sink; done
// receives what Run returns.
func runNode(t *testing.T, cfg NodeConfig, src Source, meters *Meters, sink *captureSink) (n *Node, done chan error) {
	t.Helper()
	n, err := NewNode(cfg, src, NewDecoder(meters), halfRater{}, []Sink{sink}, []DeadLetterSink{captureDead{sink}},
		prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() { done <- n.Run(context.Background()) }()
	return n, done
}

// fakeGroup assigns tasks 0 and 1 at Join; the test revokes by hand.
type fakeGroup struct{ revoked func([]int32) }

func (g *fakeGroup) Join(_ context.Context, assigned, revoked, _ func([]int32)) error {
	g.revoked = revoked
	assigned([]int32{0, 1})
	return nil
}

func (g *fakeGroup) Leave() {}

// outageChangelogs are changelogs that take nothing while down.
type outageChangelogs struct{ down atomic.Bool }

func (c *outageChangelogs) Open(context.Context, int32) (Changelog, error) { return c, nil }

func (c *outageChangelogs) ReadFrom(context.Context, int32, int64, func([]state.Op, int64) error) error {
	return nil
}

func (c *outageChangelogs) Append(_ context.Context, ops []state.Op) (int64, error) {
	if c.down.Load() {
		return 0, errors.New("broker unreachable")
	}
	return int64(len(ops)), nil
}
