package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/state"
)

// minWatermark is the watermark before any event was seen: nothing closes.
const minWatermark = math.MinInt64

// OffsetEarliest asks a source to start a partition at its first offset.
const OffsetEarliest = -2

// Source reads usage records partition by partition.
type Source interface {
	// Partitions lists the partitions to read.
	Partitions(ctx context.Context) ([]PartitionID, error)
	// Open returns a reader of p starting at offset (or OffsetEarliest).
	Open(ctx context.Context, p PartitionID, offset int64) (PartitionReader, error)
}

// PartitionReader reads one partition in offset order. It is used by one
// goroutine at a time.
type PartitionReader interface {
	// Fetch blocks until at least one record is available and returns the
	// records in offset order. Transient errors are retried inside; an error
	// returned is fatal for the engine.
	Fetch(ctx context.Context) ([]Record, error)
	Close() error
}

// Changelog makes a task's checkpoints durable off the machine, before its
// local store takes them: the store is a cache of it.
type Changelog interface {
	// Append writes one checkpoint's changes, in order, in one transaction,
	// and returns the changelog position after them. On an error none of
	// them may be visible yet (an unconfirmed commit may still show), so
	// the engine calls Append again with the same changes until it
	// succeeds: every change is a blind write, so a checkpoint in the
	// changelog twice, back to back, restores as once. An error wrapping
	// ErrFenced, or marked Permanent, is final.
	Append(ctx context.Context, ops []state.Op) (position int64, err error)
}

// ErrFenced is a changelog's answer when another instance took the task
// over (the group moved it while this one did not hear): this instance
// must not write for it any more.
var ErrFenced = errors.New("fenced: another instance owns the task now")

// Changelogs gives tasks their changelogs.
type Changelogs interface {
	ChangelogReader
	// Open returns task's changelog; if it is an io.Closer, the task
	// closes it when it ends.
	Open(ctx context.Context, task int32) (Changelog, error)
}

// ChangelogReader reads a task's changelog back.
type ChangelogReader interface {
	// ReadFrom calls fn with the committed changes from position on, up to
	// the changelog's end at the time of the call, in batches, each with
	// the position after it.
	ReadFrom(ctx context.Context, task int32, position int64, fn func(ops []state.Op, next int64) error) error
}

// Sink receives rated rows. Delivery is at least once: after a crash, rows
// already written may be written again with the same identity and revision,
// so Write must be idempotent on (identity, revision).
type Sink interface {
	// Name is stable across restarts: it keys the sink's progress.
	Name() string
	Write(ctx context.Context, rows []RatedRow) error
}

// BatchSizer is implemented by a sink (or dead-letter sink) that writes
// best in batches of another size than defaultSinkBatchRows: BatchRows
// is the rows of one write it asks for when sinkBatchRows is not set.
type BatchSizer interface {
	BatchRows() int
}

// defaultSinkBatchRows bounds the rows of one write to a sink that does
// not say (BatchSizer) and when sinkBatchRows is not set.
const defaultSinkBatchRows = 10_000

// sinkBatchRows returns the rows of one write to sink s: the configured
// sinkBatchRows, else what s asks for, else defaultSinkBatchRows.
func (c *Config) sinkBatchRows(s any) int {
	if c.SinkBatchRows > 0 {
		return c.SinkBatchRows
	}
	if b, ok := s.(BatchSizer); ok && b.BatchRows() > 0 {
		return b.BatchRows()
	}
	return defaultSinkBatchRows
}

// DeadLetterSink receives dead letters, at least once.
type DeadLetterSink interface {
	Name() string
	WriteDeadLetters(ctx context.Context, letters []DeadLetter) error
}

// Config holds the engine's settings. Durations are event time unless named
// otherwise.
type Config struct {
	Tenant string `yaml:"tenant"`
	// FaultHook, when set, is called just before each checkpoint is
	// committed, with the point "checkpoint". Crash tests use it to kill
	// the process during a commit; production leaves it nil.
	FaultHook func(point string) `yaml:"-"`
	// Shards is the number of aggregator goroutines; 0 means GOMAXPROCS.
	Shards int `yaml:"shards"`
	// Window is the window of meters that do not set their own.
	Window time.Duration `yaml:"window"`
	// CheckpointInterval is the wall-clock time between checkpoints; a
	// queued provisioning action cuts one sooner (actionCheckpointSpacing).
	CheckpointInterval time.Duration `yaml:"checkpointInterval"`
	// AllowedLateness is how far a partition's watermark trails its highest
	// event time.
	AllowedLateness time.Duration `yaml:"allowedLateness"`
	// Grace delays a window's close past its end.
	Grace time.Duration `yaml:"grace"`
	// ReviseHorizon is how long after its end a window still accepts records
	// (as a new revision). Older records are dead-lettered as late.
	ReviseHorizon time.Duration `yaml:"reviseHorizon"`
	// FinalizeAfter, when > 0, keeps windows revisable until their billing
	// period is finalized: FinalizeAfter past the period's end (event time).
	// Records for a finalized period are dead-lettered as late. Windows past
	// ReviseHorizon then leave memory and are read back from the store when
	// a late record revises them. 0 keeps the ReviseHorizon rule.
	FinalizeAfter time.Duration `yaml:"finalizeAfter"`
	// DedupMemoryHorizon is how far behind the watermark event ids stay in
	// memory; older ones (up to DedupHorizon) are checked in the store,
	// behind its bloom filters. 0 means AllowedLateness + Grace + 10s:
	// records within the lateness bound are checked in memory.
	DedupMemoryHorizon time.Duration `yaml:"dedupMemoryHorizon"`
	// DedupHorizon is how far behind the watermark event ids are remembered;
	// a record further behind is dead-lettered as late, because a duplicate
	// of it could no longer be recognised. 0 means ReviseHorizon, or with
	// FinalizeAfter, 31 days + FinalizeAfter.
	DedupHorizon time.Duration `yaml:"dedupHorizon"`
	// BillingAnchorDay is the day of the month billing periods start on
	// (1..28) for customers that do not set theirs.
	BillingAnchorDay int `yaml:"billingAnchorDay"`
	// Timezone is the IANA zone of customers that do not set theirs; it
	// places billing periods and customer-aligned windows. Default UTC.
	Timezone string `yaml:"timezone"`
	// Customers lists per-customer settings (time zone, anchor day).
	Customers []Customer `yaml:"customers"`
	// EmitOpenEvery, if > 0, also emits provisional revisions of open windows
	// this often (wall clock).
	EmitOpenEvery time.Duration `yaml:"emitOpenEvery"`
	// IdleTimeout excludes a partition that received nothing for this long
	// (wall clock) from the watermark, so it cannot stall windows.
	IdleTimeout time.Duration `yaml:"idleTimeout"`
	// MaxUndeliveredCheckpoints bounds how far sinks may fall behind before
	// consumption pauses (backpressure).
	MaxUndeliveredCheckpoints int `yaml:"maxUndeliveredCheckpoints"`
	// SinkBatchRows bounds the rows of one sink write, for every sink; 0
	// lets each sink choose (see BatchSizer).
	SinkBatchRows int `yaml:"sinkBatchRows"`
	// Partitioner is how producers place customers on partitions (records
	// must be keyed by customer); records that arrived elsewhere are
	// dead-lettered as wrong_partition. PartitionerNone checks nothing.
	Partitioner Partitioner `yaml:"-"`
	// Changelog, when set, receives every checkpoint's changes before the
	// store does (a task of a Node; docs/scale-out.md).
	Changelog Changelog `yaml:"-"`
	// ActionSinks receive provisioning actions. Without one, entitlements
	// are answered live but no crossing is announced (nothing would
	// deliver the actions, and their outbox would only grow).
	ActionSinks []ActionSink `yaml:"-"`
	// ownershipCounts, set by a Node, are the partition counts customers
	// are placed by, the same for every task (recorded by the Node).
	ownershipCounts map[string]int
	// PartitionDiscovery is how often (wall clock) the source's partitions
	// are listed again: partitions added to a topic are read from their
	// first offset within it. 0 disables.
	PartitionDiscovery time.Duration `yaml:"-"`
	// DrainTimeout bounds a graceful stop's wait for the sinks (wall
	// clock): rows not delivered by then stay in the outbox and go out
	// after the next start. 0 waits as long as it takes.
	DrainTimeout time.Duration `yaml:"drainTimeout"`
	// MaxLiveWindows is the memory budget, in windows held in memory (about
	// 1.1 KB each, see README): closed windows beyond it spill to the store.
	// 0 means no budget.
	MaxLiveWindows int `yaml:"maxLiveWindows"`
	// DeltaBaseMinBytes is the smallest delta log a base replaces (see
	// state/delta.go); 0 means 1 MiB. Tests lower it to write bases often.
	DeltaBaseMinBytes int64 `yaml:"-"`
}

// DefaultConfig returns the defaults documented in README.
func DefaultConfig() Config {
	return Config{
		Tenant:                    "default",
		Timezone:                  "UTC",
		Window:                    time.Minute,
		CheckpointInterval:        time.Second,
		AllowedLateness:           5 * time.Second,
		Grace:                     0,
		ReviseHorizon:             time.Hour,
		BillingAnchorDay:          1,
		IdleTimeout:               30 * time.Second,
		MaxUndeliveredCheckpoints: 300,
		MaxLiveWindows:            5_000_000,
		PartitionDiscovery:        30 * time.Second,
		Partitioner:               PartitionerMurmur2,
		DrainTimeout:              30 * time.Second,
	}
}

// ConfigError names a bad setting by its config key and says what is wrong.
type ConfigError struct {
	Key     string
	Problem string
}

func (e *ConfigError) Error() string { return e.Key + ": " + e.Problem }

func configError(key, format string, args ...any) error {
	return &ConfigError{Key: key, Problem: fmt.Sprintf(format, args...)}
}

// Validate names the first bad setting and how to fix it.
func (c *Config) Validate() error {
	switch {
	case c.Tenant == "":
		return configError("tenant", "empty; set a tenant name such as \"default\"")
	case c.Shards < 0 || c.Shards > 1024:
		return configError("shards", "%d is outside 0..1024 (0 means one per CPU)", c.Shards)
	case c.Window < time.Second || c.Window > 24*time.Hour || (24*time.Hour)%c.Window != 0:
		return configError("window", "%s must divide a day and be at least 1s (e.g. 1m, 1h)", c.Window)
	case c.CheckpointInterval < 10*time.Millisecond || c.CheckpointInterval > time.Minute:
		return configError("checkpointInterval", "%s is outside 10ms..1m", c.CheckpointInterval)
	case c.AllowedLateness < 0:
		return configError("allowedLateness", "%s is negative", c.AllowedLateness)
	case c.Grace < 0:
		return configError("grace", "%s is negative", c.Grace)
	case c.ReviseHorizon < c.Grace:
		return configError("reviseHorizon", "%s is shorter than grace %s; a window must stay revisable until it closes", c.ReviseHorizon, c.Grace)
	case c.DedupHorizon < 0 || c.DedupHorizon > 93*24*time.Hour:
		return configError("dedupHorizon", "%s is outside 0..2232h (0 means reviseHorizon)", c.DedupHorizon)
	case c.DedupMemoryHorizon < 0:
		return configError("dedupMemoryHorizon", "%s is negative (0 means allowedLateness + grace + 10s)", c.DedupMemoryHorizon)
	case c.FinalizeAfter < 0 || c.FinalizeAfter > 93*24*time.Hour:
		return configError("finalizeAfter", "%s is outside 0..2232h (0 disables)", c.FinalizeAfter)
	case c.BillingAnchorDay < 1 || c.BillingAnchorDay > 28:
		return configError("billingAnchorDay", "%d is outside 1..28 (every month has the day)", c.BillingAnchorDay)
	case c.Timezone != "" && !validZone(c.Timezone):
		return configError("timezone", "%q is not an IANA time zone such as Europe/Paris", c.Timezone)
	case c.EmitOpenEvery < 0:
		return configError("emitOpenEvery", "%s is negative (0 disables)", c.EmitOpenEvery)
	case c.IdleTimeout <= 0:
		return configError("idleTimeout", "%s must be positive", c.IdleTimeout)
	case c.MaxUndeliveredCheckpoints < 1:
		return configError("maxUndeliveredCheckpoints", "%d must be at least 1", c.MaxUndeliveredCheckpoints)
	case c.MaxLiveWindows < 0:
		return configError("maxLiveWindows", "%d is negative (0 means no budget)", c.MaxLiveWindows)
	case c.Partitioner != "" && !c.Partitioner.valid():
		return configError("kafka.partitioner", "%q is none of murmur2 (Kafka's Java default), crc32 (librdkafka's), fnv1a (Sarama's, kafka-go's), none", c.Partitioner)
	case c.PartitionDiscovery < 0:
		return configError("kafka.metadataInterval", "%s is negative (0 disables partition discovery)", c.PartitionDiscovery)
	case c.DrainTimeout < 0:
		return configError("drainTimeout", "%s is negative (0 waits for the sinks as long as it takes)", c.DrainTimeout)
	case c.SinkBatchRows < 0 || c.SinkBatchRows > 1_000_000:
		return configError("sinkBatchRows", "%d is outside 0..1000000 (0 lets each sink choose)", c.SinkBatchRows)
	}
	_, err := newCustomers(c.Customers, cmp.Or(c.Timezone, "UTC"), c.BillingAnchorDay)
	return err
}

func validZone(name string) bool {
	_, err := time.LoadLocation(name)
	return err == nil
}

// Engine reads usage, aggregates it in shards, checkpoints to the store and
// delivers rated rows and dead letters to sinks, exactly once in effect:
// every record ends in state (and so in rows), in dead letters, or as a
// counted duplicate, and rows leave only from durable checkpoints.
type Engine struct {
	cfg         Config
	rules       timeRules
	customers   *customers
	store       *state.Store
	source      Source
	decoder     *Decoder
	rater       Rater
	sinks       []Sink
	deadLetters []DeadLetterSink
	metrics     *Metrics
	log         *slog.Logger

	shards []*shard
	// eventSlices recycles the event batches of fetches: readers take
	// them, the last shard to apply one gives it back. A channel, not a
	// sync.Pool: a pool is emptied at every collection, and this engine
	// collects often (new batches were a tenth of what it allocated).
	eventSlices chan *eventBatch

	stopOnce    sync.Once
	stop        chan struct{} // closed by Shutdown
	handingOver atomic.Bool   // set by handOver: no sink drain at the stop

	// committedSeq is the last durable checkpoint, written by the checkpoint
	// writer, read by sink workers and the dispatcher.
	committedSeq atomic.Uint64
	committed    *sync.Cond // broadcast after each commit; guards nothing but wakes waiters
	commitMu     sync.Mutex

	workers []*sinkWorker
	stats   stats
	health  health

	// now is the wall clock (idleness, emitOpenEvery); tests replace it.
	now func() time.Time
	// changelogRetry paces a checkpoint's attempts at the changelog.
	changelogRetry Backoff
	// live holds the running shards for queries; nil while not running.
	live atomic.Pointer[[]*shard]
	// checkpointRequests lets tests cut a checkpoint once given offsets are
	// dispatched, instead of on the ticker.
	checkpointRequests chan checkpointRequest
	// watermarkRequests carries AdvanceWatermark's requests to the dispatcher.
	watermarkRequests chan watermarkRequest
	// actionQueued brings the shards' requests for an early checkpoint,
	// made when they queue a provisioning action (shard.queueAction);
	// noEarlyCheckpoints turns them off (tests that cut checkpoints only
	// on request, so that a seed replays the same cuts).
	actionQueued       chan struct{}
	noEarlyCheckpoints bool
	// topicIDs are the source topics' identities, as recorded in the state
	// or first seen; unrecordedTopicIDs those the next checkpoint records.
	topicIDs, unrecordedTopicIDs map[string]string
	// owners checks that records arrive on their customer's partition;
	// set at recovery, read-only while running.
	owners ownership
	// unrecordedCounts are partition counts the next checkpoint records.
	unrecordedCounts map[string]int32
	// logSize is the delta log's size, kept by the writer (and recovery);
	// baseDue asks the dispatcher for a base at its next cut.
	logSize deltaLogSize
	baseDue atomic.Bool
}

// watermarkRequest asks the dispatcher to move the watermark to at least
// atNs and cut a checkpoint.
type watermarkRequest struct {
	atNs  int64
	reply chan uint64 // receives the sequence of the cut
}

// AdvanceWatermark moves the watermark to at least t, as if every partition
// had moved past it, and cuts a checkpoint: windows and billing periods
// ending (plus grace) at or before t close and emit their final rows, fee
// rows included. It is for the end of a bounded input (tally rate --until):
// a record read afterwards that is older than t is late. It returns the
// checkpoint's sequence once cut (CheckpointSeq tells when it is durable).
func (e *Engine) AdvanceWatermark(ctx context.Context, t time.Time) (uint64, error) {
	req := watermarkRequest{atNs: t.UnixNano(), reply: make(chan uint64, 1)}
	select {
	case e.watermarkRequests <- req:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case seq := <-req.reply:
		return seq, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// checkpointRequest asks the dispatcher for a checkpoint once every listed
// partition's next offset reached the given one.
type checkpointRequest struct {
	offsets  map[PartitionID]int64
	emitOpen bool
	reply    chan uint64 // receives the sequence of the cut
}

// stats are live counters for Stats; atomics, written by several goroutines.
type stats struct {
	consumed       atomic.Uint64
	deadLetters    atomic.Uint64
	duplicates     atomic.Uint64
	windowsEmitted atomic.Uint64
	actions        atomic.Uint64
	credits        atomic.Uint64
	coldReads      atomic.Uint64
	spilled        atomic.Uint64
	lag            atomic.Int64
	watermarkNs    atomic.Int64
	// idle is set when every partition had nothing to give for
	// IdleTimeout (see watermark); a Node then moves the task's time on.
	idle      atomic.Bool
	revenueMu sync.Mutex
	revenue   map[string]decimal.Decimal
}

// Stats is a snapshot of the engine's counters since start.
type Stats struct {
	Consumed       uint64
	DeadLetters    uint64
	Duplicates     uint64
	WindowsEmitted uint64
	// Actions counts the provisioning actions announced (committed).
	Actions uint64
	// Credits counts the SLA credit rows emitted, revisions included
	// (committed).
	Credits       uint64
	Lag           int64
	Watermark     time.Time
	Revenue       map[string]decimal.Decimal // by currency
	CheckpointSeq uint64
}

// New builds an engine. It reads nothing until Run.
func New(cfg Config, store *state.Store, source Source, decoder *Decoder, rater Rater,
	sinks []Sink, deadLetters []DeadLetterSink, metrics *Metrics, log *slog.Logger) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	if cfg.Shards == 0 {
		cfg.Shards = runtime.GOMAXPROCS(0)
	}
	if len(deadLetters) == 0 {
		return nil, errors.New("engine: a dead-letter sink is required: records that fail must go somewhere")
	}
	if cfg.DedupHorizon == 0 {
		cfg.DedupHorizon = cfg.ReviseHorizon
		if cfg.FinalizeAfter > 0 {
			// Records may revise until a period is final, FinalizeAfter
			// past its settle end, which is at most one window past the
			// period's end: remember ids that long. The longest period is
			// 31 days, and a day more in local time where a clock goes
			// back (DST): the day of slack README promises.
			cfg.DedupHorizon = 32*24*time.Hour + decoder.meters.longestWindow() + cfg.FinalizeAfter
		}
	}
	if cfg.DedupMemoryHorizon == 0 {
		cfg.DedupMemoryHorizon = cfg.AllowedLateness + cfg.Grace + 10*time.Second
	}
	if cfg.Timezone == "" {
		cfg.Timezone = "UTC"
	}
	registry, err := newCustomers(cfg.Customers, cfg.Timezone, cfg.BillingAnchorDay)
	if err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	if err := checkSubscriptionCurrencies(rater, registry); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:         cfg,
		eventSlices: make(chan *eventBatch, 16),
		rules: timeRules{
			graceNs:         int64(cfg.Grace),
			latenessNs:      int64(cfg.AllowedLateness),
			reviseHorizonNs: int64(cfg.ReviseHorizon),
			dedupHorizonNs:  int64(cfg.DedupHorizon),
			finalizeAfterNs: int64(cfg.FinalizeAfter),
			dedupMemoryNs:   int64(cfg.DedupMemoryHorizon),
			goneEndNs:       minWatermark, goneSettleNs: minWatermark, goneBucketNs: minWatermark,
		},
		customers: registry,
		store:     store, source: source, decoder: decoder, rater: rater,
		sinks: sinks, deadLetters: deadLetters, metrics: metrics, log: log,
		stop:           make(chan struct{}),
		now:            time.Now,
		changelogRetry: Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second},

		checkpointRequests: make(chan checkpointRequest),
		watermarkRequests:  make(chan watermarkRequest),
		actionQueued:       make(chan struct{}, 1),
	}
	e.committed = sync.NewCond(&e.commitMu)
	// Every label value exists from the start, at zero, so that rates and
	// alerts work before the first occurrence.
	for _, r := range allReasons() {
		metrics.deadLetters.WithLabelValues(string(r))
	}
	for _, m := range decoder.meters.Names() {
		metrics.duplicates.WithLabelValues(m)
	}
	for _, final := range []string{"0", "1"} {
		metrics.windowsEmitted.WithLabelValues(final)
	}
	e.stats.revenue = make(map[string]decimal.Decimal)
	e.stats.watermarkNs.Store(minWatermark)
	return e, nil
}

// Stats returns the live counters.
func (e *Engine) Stats() Stats {
	e.stats.revenueMu.Lock()
	revenue := make(map[string]decimal.Decimal, len(e.stats.revenue))
	for k, v := range e.stats.revenue {
		revenue[k] = v
	}
	e.stats.revenueMu.Unlock()
	s := Stats{
		Consumed:       e.stats.consumed.Load(),
		DeadLetters:    e.stats.deadLetters.Load(),
		Duplicates:     e.stats.duplicates.Load(),
		WindowsEmitted: e.stats.windowsEmitted.Load(),
		Actions:        e.stats.actions.Load(),
		Credits:        e.stats.credits.Load(),
		Lag:            e.stats.lag.Load(),
		Revenue:        revenue,
		CheckpointSeq:  e.committedSeq.Load(),
	}
	if wm := e.stats.watermarkNs.Load(); wm != minWatermark {
		s.Watermark = time.Unix(0, wm).UTC()
	}
	return s
}

// Shutdown asks Run to stop gracefully: stop reading, take a final
// checkpoint, deliver every row to the sinks, and return. It returns at once;
// Run's return tells when it is done. Cancelling Run's context instead stops
// at once, like a crash: no final checkpoint, nothing lost either.
func (e *Engine) Shutdown() {
	e.stopOnce.Do(func() { close(e.stop) })
}

// handOver stops like Shutdown but does not wait for the sinks after the
// final checkpoint: a task that moves to another instance hands its outbox
// over with its changelog, and its next owner delivers it. It keeps a
// rebalance short.
func (e *Engine) handOver() {
	e.handingOver.Store(true)
	e.Shutdown()
}

// Ready reports nil when the engine is consuming and its sinks are healthy,
// else why not.
func (e *Engine) Ready() error { return e.health.check() }

// maxErrorText bounds an error's text in readiness reports and logs: a
// client error can list every failed message.
const maxErrorText = 500

// errorText is err's text cut to maxErrorText bytes.
func errorText(err error) string {
	msg := err.Error()
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText] + "..."
	}
	return msg
}

// health is what /readyz reports.
type health struct {
	mu         sync.Mutex
	started    bool
	paused     bool
	overBudget bool
	failing    map[string]error // sink name -> last error while failing
	// changelog is the changelog's last error while a checkpoint waits
	// for it.
	changelog error
	// warnings are what an operator must know that waiting will not mend
	// (records deleted before they were read); they do not make the
	// engine unready.
	warnings map[string]string
}

func (h *health) check() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.started {
		return errors.New("engine is recovering state or connecting to sources")
	}
	if h.changelog != nil {
		return fmt.Errorf("checkpoints wait for the changelog: %s", errorText(h.changelog))
	}
	for name, err := range h.failing {
		return fmt.Errorf("sink %s is failing: %s", name, errorText(err))
	}
	if h.paused {
		return errors.New("consumption paused: sinks are behind (backpressure)")
	}
	if h.overBudget {
		return errors.New("open windows exceed maxLiveWindows: raise it or give the engine more memory")
	}
	return nil
}

// Warnings lists what /readyz says beside readiness, sorted.
func (e *Engine) Warnings() []string {
	e.health.mu.Lock()
	defer e.health.mu.Unlock()
	return slices.Sorted(maps.Values(e.health.warnings))
}

func (h *health) set(f func(h *health)) {
	h.mu.Lock()
	f(h)
	h.mu.Unlock()
}
