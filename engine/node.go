package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// Node runs one Engine per task, the scale-out model of docs/scale-out.md:
// a task is one partition number of the usage topics (partition p of each,
// the topics co-partitioned), and everything that decides its customers'
// money (windows, periods, subscriptions, dedup ids, offsets, watermark,
// outbox) lives in the task's own state folder, StateDir/tasks/<p>, so that
// it can move on its own. Without a Membership a Node owns every task (one
// process); with one, a consumer group shares them between instances, and
// each task moves through its changelog (NodeConfig.Changelogs).
//
// Invariant (one owner): every task places customers by the same partition
// counts, recorded once for the Node (StateDir/node), so that a customer
// has state in one task only, also after a topic grows.
type Node struct {
	cfg         NodeConfig
	source      Source
	decoder     *Decoder
	rater       Rater
	sinks       []Sink
	deadLetters []DeadLetterSink
	registry    prometheus.Registerer
	log         *slog.Logger

	mu     sync.Mutex
	tasks  map[int32]*task
	counts map[string]int // ownership: partitions per topic, as recorded
	// lead is the topic whose partition count places fee customers.
	lead string

	stopOnce sync.Once
	stop     chan struct{}

	// Set by Run for the tasks it starts.
	runCtx context.Context
	failed chan error
	wg     sync.WaitGroup
}

// NodeConfig configures a Node.
type NodeConfig struct {
	// Engine is every task's engine configuration. Its Partitioner must
	// place customers (not PartitionerNone): fees and queries go to a
	// customer's task by it.
	Engine   Config
	StateDir string
	// Meta is the node's own store, opened by OpenNodeState; nil, Run
	// opens it. The caller opens it to hold the state folder's lock from
	// before any of its clients uses the folder's name (cmd/tally
	// nodeName) until after they all closed.
	Meta *state.Store
	// Membership, when set, decides which tasks this Node owns (a Kafka
	// consumer group); without it the Node owns them all.
	Membership Membership
	// Progress, when set, shares every task's time with the other
	// instances of the group, so that idle tasks move by the whole group's
	// time (see advanceIdle).
	Progress Progress
	// Changelogs, when set, gives each task a changelog: its state is
	// restored from it before the task starts (the local folder is a cache
	// of it), and every checkpoint goes to it first.
	Changelogs Changelogs
}

// task is one running engine.
type task struct {
	p       int32
	engine  *Engine
	cancel  context.CancelFunc // stops at once, like a crash
	done    chan struct{}      // closed when the engine returned, err set
	err     error
	metrics *Metrics
}

// movedWithoutFinalCheckpoint reports whether t, ended, was handed over
// without its final checkpoint (the changelog out of reach): that fails
// nothing, since its next owner restores the last committed one.
func (t *task) movedWithoutFinalCheckpoint() bool {
	return t.engine.handingOver.Load() && errors.Is(t.err, ErrStopTimedOut)
}

// TaskProgress is a task's time as its owner last reported it.
type TaskProgress struct {
	WatermarkNs int64
	Idle        bool
	At          time.Time // wall clock of the report
}

// Progress shares tasks' time between the instances of a group.
type Progress interface {
	Publish(ctx context.Context, tasks map[int32]TaskProgress) error
	// Latest is every task's last report.
	Latest() map[int32]TaskProgress
}

// Membership tells a Node which tasks are its own: a Kafka consumer group.
type Membership interface {
	// Join joins; the group then calls assigned, revoked and lost with
	// tasks, one call at a time. revoked and lost return once those tasks
	// have stopped, so that no two members ever run one task.
	Join(ctx context.Context, assigned, revoked, lost func(tasks []int32)) error
	// Leave ends the membership: the member's tasks move at once (a
	// static member's after the session timeout, or to its restart).
	Leave()
}

// NewNode builds a Node; it reads nothing until Run. Every task's engine
// shares the source, decoder, rater and sinks (all safe for concurrent use)
// and registers its metrics on registry with the label task="<p>".
func NewNode(cfg NodeConfig, source Source, decoder *Decoder, rater Rater, sinks []Sink, deadLetters []DeadLetterSink,
	registry prometheus.Registerer, log *slog.Logger) (*Node, error) {
	if err := cfg.Engine.Validate(); err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	if cfg.Engine.Partitioner == "" || cfg.Engine.Partitioner == PartitionerNone {
		return nil, configError("kafka.partitioner", "partition-owned tasks need to know where each customer lives: name the producers' partitioner (murmur2, crc32, fnv1a)")
	}
	if cfg.StateDir == "" {
		return nil, configError("stateDir", "empty")
	}
	return &Node{cfg: cfg, source: source, decoder: decoder, rater: rater, sinks: sinks, deadLetters: deadLetters,
		registry: registry, log: log, tasks: make(map[int32]*task), stop: make(chan struct{})}, nil
}

// Shutdown asks every task to stop gracefully (final checkpoint, sinks
// drained) and Run to return.
func (n *Node) Shutdown() { n.stopOnce.Do(func() { close(n.stop) }) }

// Run places the tasks, runs one engine per task it owns until Shutdown
// (graceful) or ctx ends (immediate). Without a Membership it owns every
// task and starts those of partitions added while running; with one, the
// group decides, task by task. A task that fails stops the Node: its error
// is returned.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	meta := n.cfg.Meta
	if meta == nil {
		// Open while the Node runs: its lock keeps a second process off
		// this state folder (a task's folder is locked only while the task
		// runs).
		var err error
		if meta, err = OpenNodeState(n.cfg.StateDir); err != nil {
			return err
		}
		defer meta.Close()
	}
	partitions, err := n.place(ctx, meta)
	if err != nil {
		return err
	}
	n.runCtx, n.failed = ctx, make(chan error, 1)
	defer n.wg.Wait()
	if n.cfg.Membership != nil {
		err := n.cfg.Membership.Join(ctx,
			func(ps []int32) { n.startTasks(ps) },
			func(ps []int32) { n.stopTasks(ps, true) },
			func(ps []int32) { n.stopTasks(ps, false) })
		if err != nil {
			return err
		}
		defer n.cfg.Membership.Leave()
	} else {
		n.startTasks(partitions)
		n.log.Info("tasks started", "tasks", len(partitions), "state", filepath.Join(n.cfg.StateDir, "tasks"))
	}

	idleCheck := time.NewTicker(max(n.cfg.Engine.CheckpointInterval, 100*time.Millisecond))
	defer idleCheck.Stop()
	var ticks <-chan time.Time
	if d := n.cfg.Engine.PartitionDiscovery; d > 0 && n.cfg.Membership == nil {
		t := time.NewTicker(d)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case err := <-n.failed:
			cancel(err)
			return err
		case <-n.stop:
			// Every task ends with a checkpoint of its own before the
			// member leaves: its next owner restores all of it. The tasks
			// stay listed, for Stats.
			return n.shutdownAll()
		case <-idleCheck.C:
			if err := n.advanceIdle(ctx); err != nil {
				cancel(err)
				return err
			}
		case <-ticks:
			listed, err := n.source.Partitions(ctx)
			if err != nil {
				n.log.Warn("listing source partitions failed; retrying", "err", err)
				continue
			}
			n.startTasks(partitionNumbers(listed))
		}
	}
}

// startTasks starts the tasks of ps not running yet, side by side: each
// opens its folder and reads its changelog, and a moved task waits for
// its own start only. A task that cannot start fails the Node.
func (n *Node) startTasks(ps []int32) {
	select {
	case <-n.stop:
		return // stopping: a task started now would never be stopped
	default:
	}
	var todo []int32
	n.mu.Lock()
	for _, p := range ps {
		if _, ok := n.tasks[p]; !ok {
			todo = append(todo, p)
		}
	}
	n.mu.Unlock()
	started := make([]*task, len(todo))
	errs := make([]error, len(todo))
	var wg sync.WaitGroup
	for i, p := range todo {
		wg.Go(func() { started[i], errs[i] = n.startTask(n.runCtx, p) })
	}
	wg.Wait()
	for i, t := range started {
		if errs[i] != nil {
			n.fail(errs[i])
			continue
		}
		n.mu.Lock()
		n.tasks[t.p] = t
		n.mu.Unlock()
		n.log.Info("task started", "task", t.p)
	}
}

// stopTasks stops the tasks of ps that run here: gracefully (a final
// checkpoint, for a task the group moves) or at once (a task lost: another
// member may own it already, and fenced it). It returns once they ended.
func (n *Node) stopTasks(ps []int32, graceful bool) {
	select {
	case <-n.stop:
		// The Node is stopping (leaving the group revokes everything):
		// its tasks end, each with a final checkpoint.
		_ = n.shutdownAll() // Run reports the errors of the tasks it stopped itself
		return
	default:
	}
	// All of them at once: their final checkpoints run side by side, and
	// the group waits for the slowest only.
	var stopping []*task
	for _, p := range ps {
		n.mu.Lock()
		t := n.tasks[p]
		n.mu.Unlock()
		if t == nil {
			continue
		}
		// With "task stopped" below and "state recovered" on the next
		// owner, the log tells how long a moved task paused.
		n.log.Info("task stopping", "task", p, "graceful", graceful)
		if graceful {
			t.engine.handOver()
		} else {
			t.cancel()
		}
		stopping = append(stopping, t)
	}
	for _, t := range stopping {
		if err := n.forgetTask(t, graceful); err != nil {
			n.fail(err)
		}
		n.log.Info("task stopped", "task", t.p, "graceful", graceful)
	}
}

// shutdownAll stops every task listed here gracefully, side by side, and
// returns the errors they ended with; a task already ended (with the Node)
// is only waited for.
func (n *Node) shutdownAll() error {
	tasks := n.running()
	stopping := make([]bool, len(tasks))
	for i, t := range tasks {
		select {
		case <-t.done:
			continue
		default:
		}
		stopping[i] = true
		n.log.Info("task stopping", "task", t.p, "graceful", true)
		t.engine.Shutdown()
	}
	var errs []error
	for i, t := range tasks {
		<-t.done
		if stopping[i] {
			n.log.Info("task stopped", "task", t.p, "graceful", true)
		}
		if t.err != nil {
			errs = append(errs, fmt.Errorf("task %d: %w", t.p, t.err))
		}
	}
	return errors.Join(errs...)
}

// forgetTask waits for t, told to stop, to end, and forgets it.
func (n *Node) forgetTask(t *task, graceful bool) error {
	<-t.done
	n.mu.Lock()
	if n.tasks[t.p] == t {
		delete(n.tasks, t.p)
	}
	n.mu.Unlock()
	t.metrics.unregister()
	if t.movedWithoutFinalCheckpoint() {
		n.log.Warn("task moved without its final checkpoint", "task", t.p, "err", t.err)
		return nil
	}
	if graceful && t.err != nil {
		return fmt.Errorf("task %d: %w", t.p, t.err)
	}
	return nil
}

// fail stops the Node with err (the first one wins).
func (n *Node) fail(err error) {
	select {
	case n.failed <- err:
	default:
	}
}

// advanceIdle moves the time of tasks whose partitions all had nothing to
// give for IdleTimeout to where one engine reading every partition would
// have it: the lowest watermark of the tasks still active, or, when every
// task is idle, the furthest any got. With a Progress, "every task" is the
// group's: every task of the lead topic as its owner last reported it (one
// without a report in the last 3 idleTimeouts, at least 10 s, holds time
// where it last was), this Node's own as they are. Without it the windows and periods
// of a quiet partition's customers would wait for its next record, and the
// end of a drained stream would close only in the task that read its last
// record. Invariant: a task's watermark never goes back (AdvanceWatermark
// only moves it forward).
func (n *Node) advanceIdle(ctx context.Context) error {
	tasks := n.running()
	now := time.Now()
	view := make(map[int32]TaskProgress)
	if n.cfg.Progress != nil {
		// Every task of the group counts. One without a fresh report (its
		// owner died, it is being restored or moved, it never reported)
		// holds time where it last was, as an active partition would.
		fresh := max(3*n.cfg.Engine.IdleTimeout, 10*time.Second)
		latest := n.cfg.Progress.Latest()
		for p := range int32(n.counts[n.lead]) {
			tp, ok := latest[p]
			if !ok {
				tp.WatermarkNs = minWatermark
			}
			if !ok || now.Sub(tp.At) > fresh {
				tp.Idle = false
			}
			view[p] = tp
		}
	}
	mine := make(map[int32]TaskProgress, len(tasks))
	for _, t := range tasks {
		select {
		case <-t.done:
			continue
		default:
		}
		tp := TaskProgress{WatermarkNs: t.engine.stats.watermarkNs.Load(), Idle: t.engine.stats.idle.Load(), At: now}
		mine[t.p], view[t.p] = tp, tp
	}
	if n.cfg.Progress != nil && len(mine) > 0 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		err := n.cfg.Progress.Publish(pctx, mine)
		cancel()
		if err != nil && ctx.Err() == nil {
			n.log.Warn("sharing the tasks' time failed; retrying", "err", err)
		}
	}
	lowestActive, furthest := int64(math.MaxInt64), int64(minWatermark)
	anyActive := false
	for _, tp := range view {
		furthest = max(furthest, tp.WatermarkNs)
		if !tp.Idle {
			anyActive = true
			lowestActive = min(lowestActive, tp.WatermarkNs)
		}
	}
	target := furthest
	if anyActive {
		target = lowestActive
	}
	if target == minWatermark {
		return nil
	}
	for _, t := range tasks {
		if tp, ok := mine[t.p]; !ok || !tp.Idle || tp.WatermarkNs >= target {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := t.engine.AdvanceWatermark(actx, time.Unix(0, target))
		cancel()
		if err != nil && ctx.Err() == nil {
			if errors.Is(err, context.DeadlineExceeded) {
				continue // the task is busy (a checkpoint, backpressure): next time
			}
			return fmt.Errorf("task %d: advance its watermark: %w", t.p, err)
		}
	}
	return nil
}

// running lists the tasks, by partition.
func (n *Node) running() []*task {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*task, 0, len(n.tasks))
	for _, t := range n.tasks {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *task) int { return int(a.p - b.p) })
	return out
}

// TasksLayoutEntry reports whether name may be in a state folder of
// partition-owned tasks: node (the Node's store), tasks, and what no
// layout writes (lost+found, a LOCK left by an interrupted first start
// that held nothing). Anything else belongs to a single engine's store
// (scaleOut: off), whose state stays with it.
func TasksLayoutEntry(name string) bool {
	return name == "node" || name == "tasks" || name == "lost+found" || name == "LOCK"
}

// OpenNodeState opens the Node's own store (stateDir/node) after checking
// that stateDir holds partition-owned tasks only. Its Pebble lock keeps
// every other process off stateDir until it is closed.
func OpenNodeState(stateDir string) (*state.Store, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("engine: state folder: %w", err)
	}
	entries, err := os.ReadDir(stateDir)
	if err != nil {
		return nil, fmt.Errorf("engine: state folder: %w", err)
	}
	for _, e := range entries {
		if !TasksLayoutEntry(e.Name()) {
			return nil, configError("stateDir", "%s holds %s, not only partition-owned tasks (node, tasks): a state written with scaleOut: off stays with it; give partition-owned tasks (scaleOut local or group) a folder of their own",
				stateDir, e.Name())
		}
	}
	return state.Open(filepath.Join(stateDir, "node"))
}

// place records (or reads back) in meta, the Node's store, the partition
// counts customers are placed by and returns the partition numbers to run
// tasks for.
func (n *Node) place(ctx context.Context, meta *state.Store) ([]int32, error) {
	recorded, err := meta.PartitionCounts()
	if err != nil {
		return nil, err
	}
	listed, err := n.source.Partitions(ctx)
	if err != nil {
		return nil, fmt.Errorf("engine: list source partitions: %w", err)
	}
	now := PartitionCounts(listed)
	var lead string
	for topic := range now {
		if lead == "" || topic < lead {
			lead = topic
		}
	}
	unrecorded := make(map[string]int32)
	n.counts = make(map[string]int)
	for topic, c := range now {
		if r, ok := recorded[topic]; ok {
			c = r
		} else {
			unrecorded[topic] = c
		}
		n.counts[topic] = int(c)
	}
	// Co-partitioned: a task reads partition p of every topic, so a
	// customer keyed alike in each lands in one task.
	for topic, c := range n.counts {
		if c != n.counts[lead] {
			return nil, configError("kafka.topics", "%s has %d partitions and %s %d: partition-owned tasks read partition p of every usage topic, so they must have the same number (or use one topic)",
				lead, n.counts[lead], topic, c)
		}
	}
	n.lead = lead
	if len(unrecorded) > 0 {
		seq, err := meta.LastSeq()
		if err != nil {
			return nil, err
		}
		if err := meta.Commit(&state.Checkpoint{Seq: seq + 1, PartitionCounts: unrecorded}); err != nil {
			return nil, err
		}
	}
	return partitionNumbers(listed), nil
}

// partitionNumbers is the partition numbers of a listing, sorted, each once.
func partitionNumbers(listed []PartitionID) []int32 {
	var out []int32
	for _, id := range listed {
		if !slices.Contains(out, id.Partition) {
			out = append(out, id.Partition)
		}
	}
	slices.Sort(out)
	return out
}

// taskOf is the task of customer.
func (n *Node) taskOf(customer string) int32 {
	p, _ := n.cfg.Engine.Partitioner.partition(customer, n.counts[n.lead])
	return int32(p)
}

// startTask opens task p's state and runs its engine.
func (n *Node) startTask(ctx context.Context, p int32) (*task, error) {
	store, err := state.Open(filepath.Join(n.cfg.StateDir, "tasks", strconv.Itoa(int(p))))
	if err != nil {
		return nil, fmt.Errorf("engine: task %d: %w", p, err)
	}
	cfg := n.cfg.Engine
	cfg.PartitionDiscovery = 0 // the Node discovers partitions
	cfg.ownershipCounts = n.counts
	var closeChangelog func()
	if n.cfg.Changelogs != nil {
		// Invariant: fence, then restore. Opening the changelog fences the
		// task's previous owner, so nothing can commit to the changelog
		// after the restore has read it.
		cl, err := n.cfg.Changelogs.Open(ctx, p)
		if err != nil {
			store.Close()
			return nil, fmt.Errorf("engine: task %d: %w", p, err)
		}
		closeChangelog = func() {
			if c, ok := cl.(io.Closer); ok {
				c.Close()
			}
		}
		if err := n.restore(ctx, p, store); err != nil {
			closeChangelog()
			store.Close()
			return nil, err
		}
		cfg.Changelog = cl
	}
	var lead string
	if n.cfg.Membership != nil {
		lead = n.lead
	}
	metrics := NewMetrics(prometheus.WrapRegistererWith(prometheus.Labels{"task": strconv.Itoa(int(p))}, n.registry))
	rater := ownedRater(n.rater, func(customer string) bool { return n.taskOf(customer) == p })
	e, err := New(cfg, store, taskSource{Source: n.source, p: p, lead: lead}, n.decoder, rater, n.sinks, n.deadLetters, metrics, n.log.With("task", p))
	if err != nil {
		store.Close()
		metrics.unregister()
		if closeChangelog != nil {
			closeChangelog()
		}
		return nil, err
	}
	taskCtx, cancel := context.WithCancel(ctx)
	t := &task{p: p, engine: e, cancel: cancel, done: make(chan struct{}), metrics: metrics}
	n.wg.Go(func() {
		defer close(t.done)
		defer cancel()
		t.err = e.Run(taskCtx)
		if closeChangelog != nil {
			closeChangelog()
		}
		store.Close()
		if t.err != nil && taskCtx.Err() == nil && !t.movedWithoutFinalCheckpoint() { // forgetTask says so
			n.fail(fmt.Errorf("task %d: %w", p, t.err))
		}
	})
	return t, nil
}

// restore brings task p's local state up to its changelog: the changes
// committed after the position the folder recorded (all of them for a new
// folder: a lost machine, a task that moved). Invariant: a task reads no
// record before its state is the changelog's.
func (n *Node) restore(ctx context.Context, p int32, store *state.Store) error {
	position, followed, err := store.ChangelogPosition()
	if err != nil {
		return err
	}
	if seq, err := store.LastSeq(); err != nil {
		return err
	} else if seq > 0 && !followed {
		return fmt.Errorf("engine: task %d: its state folder was written without a changelog, so the changelog does not hold it: move %s away to restore the task from its changelog", p,
			filepath.Join(n.cfg.StateDir, "tasks", strconv.Itoa(int(p))))
	}
	start, applied := time.Now(), 0
	err = n.cfg.Changelogs.ReadFrom(ctx, p, position, func(ops []state.Op, next int64) error {
		applied += len(ops)
		return store.Apply(ops, next)
	})
	if err != nil {
		return fmt.Errorf("engine: task %d: restore from its changelog: %w", p, err)
	}
	if applied > 0 {
		n.log.Info("task restored from its changelog", "task", p, "changes", applied, "from", position, "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// taskSource is one task's view of the source: partition p of every topic.
type taskSource struct {
	Source
	p int32
	// lead, when set, is the topic whose partition p the group assigned
	// (the source's topic, cmd/tally wires the group to it): it exists,
	// and a listing without it is stale (the broker asked may not know of
	// a partition just added yet), so Partitions waits for it instead of
	// starting a task that would read nothing.
	lead string
}

// leadWait paces and bounds a task's wait for its assigned partition to be
// listed (brokers learn of new partitions one after the other): about
// 10 s, well within the rebalance timeout, since a revocation waits for it.
var leadWait = Backoff{Min: 50 * time.Millisecond, Max: time.Second, Attempts: 14}

func (s taskSource) Partitions(ctx context.Context) ([]PartitionID, error) {
	var out []PartitionID
	err := leadWait.Retry(ctx, func(int) error {
		all, err := s.Source.Partitions(ctx)
		if err != nil {
			return Permanent(err)
		}
		out = out[:0]
		for _, id := range all {
			if id.Partition == s.p {
				out = append(out, id)
			}
		}
		if s.lead == "" || slices.Contains(out, PartitionID{Topic: s.lead, Partition: s.p}) {
			return nil
		}
		return fmt.Errorf("engine: task %d: the group assigned partition %d of %s, but the brokers did not list it within about 10 s", s.p, s.p, s.lead)
	}, nil)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// TopicIDs passes the source's topic identities on, when it has them.
func (s taskSource) TopicIDs(ctx context.Context) (map[string]string, error) {
	if ti, ok := s.Source.(TopicIdentifier); ok {
		return ti.TopicIDs(ctx)
	}
	return nil, nil
}

// ownedRater narrows a rater's configured subscribers to a task's: each
// customer's fees are owed once, by the task that holds its usage.
func ownedRater(r Rater, owns func(customer string) bool) Rater {
	if rules, ok := r.(ratingRules); ok {
		return ownedRules{rules, owns}
	}
	return r
}

type ratingRules interface {
	Rater
	SubscriptionRules
}

type ownedRules struct {
	ratingRules
	owns func(string) bool
}

func (o ownedRules) Subscribers() []string {
	var out []string
	for _, c := range o.ratingRules.Subscribers() {
		if o.owns(c) {
			out = append(out, c)
		}
	}
	return out
}

// Stats sums the tasks' counters; the watermark is the lowest task's.
func (n *Node) Stats() Stats {
	out := Stats{Revenue: make(map[string]decimal.Decimal)}
	for _, t := range n.running() {
		s := t.engine.Stats()
		out.Consumed += s.Consumed
		out.DeadLetters += s.DeadLetters
		out.Duplicates += s.Duplicates
		out.WindowsEmitted += s.WindowsEmitted
		out.Actions += s.Actions
		out.Credits += s.Credits
		out.Lag += s.Lag
		out.CheckpointSeq += s.CheckpointSeq
		for cur, a := range s.Revenue {
			out.Revenue[cur] = out.Revenue[cur].Add(a)
		}
		if !s.Watermark.IsZero() && (out.Watermark.IsZero() || s.Watermark.Before(out.Watermark)) {
			out.Watermark = s.Watermark
		}
	}
	return out
}

// Ready reports the first task that is not ready.
func (n *Node) Ready() error {
	tasks := n.running()
	if len(tasks) == 0 {
		return errors.New("no task started yet")
	}
	for _, t := range tasks {
		if err := t.engine.Ready(); err != nil {
			return fmt.Errorf("task %d: %w", t.p, err)
		}
	}
	return nil
}

// Warnings lists every task's warnings.
func (n *Node) Warnings() []string {
	var out []string
	for _, t := range n.running() {
		out = append(out, t.engine.Warnings()...)
	}
	return out
}

// customerEngine is the engine of the task that owns customer's
// partition; nil if this node runs no such task.
func (n *Node) customerEngine(customer string) *Engine {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t := n.tasks[n.taskOf(customer)]; t != nil {
		return t.engine
	}
	return nil
}

// Usage answers from the customer's task.
func (n *Node) Usage(ctx context.Context, req UsageRequest) (Usage, error) {
	e := n.customerEngine(req.Customer)
	if e == nil {
		return Usage{}, ErrNotRunning
	}
	return e.Usage(ctx, req)
}

// Entitlements answers from the customer's task.
func (n *Node) Entitlements(ctx context.Context, customer string) (Entitlements, error) {
	e := n.customerEngine(customer)
	if e == nil {
		return Entitlements{}, ErrNotRunning
	}
	return e.Entitlements(ctx, customer)
}

// CheckEntitlement answers from the customer's task.
func (n *Node) CheckEntitlement(ctx context.Context, customer, meter string, units decimal.Decimal) (EntitlementCheck, error) {
	e := n.customerEngine(customer)
	if e == nil {
		return EntitlementCheck{}, ErrNotRunning
	}
	return e.CheckEntitlement(ctx, customer, meter, units)
}

// ownedRules passes every EntitlementRules method on: a missing one would
// silently turn off watching (the engine asserts the interface).
var _ EntitlementRules = ownedRules{}

// Entitlements, Entitlement, HasEntitlements, PlanEntitlements and PlanAt
// pass the entitlements of the rater's plans on (none if it has none).
func (o ownedRules) Entitlements(sub rating.Subscriber, t time.Time) []rating.MeterEntitlement {
	if e, ok := o.ratingRules.(EntitlementRules); ok {
		return e.Entitlements(sub, t)
	}
	return nil
}

func (o ownedRules) Entitlement(sub rating.Subscriber, meter string, t time.Time) (rating.MeterEntitlement, bool) {
	if e, ok := o.ratingRules.(EntitlementRules); ok {
		return e.Entitlement(sub, meter, t)
	}
	return rating.MeterEntitlement{}, false
}

func (o ownedRules) HasEntitlements() bool {
	e, ok := o.ratingRules.(EntitlementRules)
	return ok && e.HasEntitlements()
}

func (o ownedRules) HasGrants() bool {
	e, ok := o.ratingRules.(EntitlementRules)
	return ok && e.HasGrants()
}

func (o ownedRules) GrantsLimit(meter string) bool {
	e, ok := o.ratingRules.(EntitlementRules)
	return ok && e.GrantsLimit(meter)
}

func (o ownedRules) PlanEntitlements(id string, t time.Time) []rating.MeterEntitlement {
	if e, ok := o.ratingRules.(EntitlementRules); ok {
		return e.PlanEntitlements(id, t)
	}
	return nil
}

func (o ownedRules) PlanAt(sub rating.Subscriber, t time.Time) (string, bool) {
	if e, ok := o.ratingRules.(EntitlementRules); ok {
		return e.PlanAt(sub, t)
	}
	return "", false
}

// ownedRules passes the SLARules methods on too: without them a Node's
// tasks would measure no objective and credit no breach.
var _ SLARules = ownedRules{}

func (o ownedRules) SLA(sub rating.Subscriber, periodEnd time.Time) (rating.SLATerms, bool) {
	if e, ok := o.ratingRules.(SLARules); ok {
		return e.SLA(sub, periodEnd)
	}
	return rating.SLATerms{}, false
}

func (o ownedRules) MeasuresService(service string) bool {
	e, ok := o.ratingRules.(SLARules)
	return ok && e.MeasuresService(service)
}

func (o ownedRules) MaxWithin() time.Duration {
	if e, ok := o.ratingRules.(SLARules); ok {
		return e.MaxWithin()
	}
	return 0
}

func (o ownedRules) HasSLA() bool {
	e, ok := o.ratingRules.(SLARules)
	return ok && e.HasSLA()
}
