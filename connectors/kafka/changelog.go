package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/state"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ChangelogConfig configures tasks' changelogs: partition p of Topic holds
// task p's state changes, one record per changed key (compacted: the
// latest per key is what restores).
type ChangelogConfig struct {
	ClientConfig
	Topic string
	// TransactionalID prefixes each task's transactional producer id
	// (prefix-p): a new owner of a task fences the old one's producer, so
	// a zombie's checkpoint can never commit.
	TransactionalID string
	Spec            TopicSpec
}

// Changelogs writes and reads tasks' changelogs.
type Changelogs struct {
	cfg ChangelogConfig
	log *slog.Logger

	mu         sync.Mutex
	admin      *kgo.Client
	partitions int32 // the topic has at least this many
}

// NewChangelogs returns the changelogs of cfg.Topic. The topic is created
// (compacted) or grown when a task first needs its partition.
func NewChangelogs(cfg ChangelogConfig, log *slog.Logger) (*Changelogs, error) {
	admin, err := kgo.NewClient(cfg.opts(log)...)
	if err != nil {
		return nil, fmt.Errorf("kafka changelog: %w", err)
	}
	compact := "compact"
	cfg.Spec.Configs = map[string]*string{"cleanup.policy": &compact}
	return &Changelogs{cfg: cfg, log: log, admin: admin}, nil
}

// Close closes the admin client.
func (c *Changelogs) Close() error {
	c.admin.Close()
	return nil
}

// ensure makes sure the topic exists with a partition for task.
func (c *Changelogs) ensure(ctx context.Context, task int32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if task < c.partitions {
		return nil
	}
	adm := kadm.NewClient(c.admin)
	spec := c.cfg.Spec
	spec.Partitions = task + 1
	if _, err := EnsureTopics(ctx, c.cfg.ClientConfig, spec, c.log, c.cfg.Topic); err != nil {
		return fmt.Errorf("kafka changelog %s: %w", c.cfg.Topic, err)
	}
	details, err := adm.ListTopics(ctx, c.cfg.Topic)
	if err != nil {
		return fmt.Errorf("kafka changelog %s: %w", c.cfg.Topic, err)
	}
	have := int32(len(details[c.cfg.Topic].Partitions))
	if have <= task {
		if _, err := adm.UpdatePartitions(ctx, int(task+1), c.cfg.Topic); err != nil {
			return fmt.Errorf("kafka changelog %s: grow to %d partitions: %w", c.cfg.Topic, task+1, err)
		}
		have = task + 1
	}
	c.partitions = have
	return nil
}

// Open returns task's changelog writer (a *ChangelogWriter; Close it when
// the task ends). Its first transaction fences the task's previous owner.
func (c *Changelogs) Open(ctx context.Context, task int32) (engine.Changelog, error) {
	if err := c.ensure(ctx, task); err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(c.cfg.opts(c.log),
		kgo.TransactionalID(fmt.Sprintf("%s-%d", c.cfg.TransactionalID, task)),
		kgo.DefaultProduceTopic(c.cfg.Topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		// A transaction open when the brokers went away is aborted by its
		// coordinator after this, and its producer is then refused like a
		// fenced one: the task stops instead of riding the outage out.
		// Long, so that outages that long are a pause; it costs nothing
		// when an owner dies, since its next owner's fence aborts the
		// transaction at once. Within Kafka's default
		// transaction.max.timeout.ms (15 minutes).
		kgo.TransactionTimeout(changelogTransactionTimeout),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka changelog writer of task %d: %w", task, err)
	}
	w := &ChangelogWriter{cl: cl, task: task}
	if err := w.fence(ctx); err != nil {
		cl.Close()
		return nil, err
	}
	return w, nil
}

// changelogTransactionTimeout is the changelog producers'
// transaction.timeout.ms.
const changelogTransactionTimeout = 5 * time.Minute

// fence takes the task's transactional id from any previous owner: a
// transaction of the old owner still open is aborted, and none of its
// later ones can commit. Its first produce makes kgo initialize the
// producer id, so one record is written in a transaction and aborted
// (invisible to the restore, which reads committed).
func (w *ChangelogWriter) fence(ctx context.Context) error {
	if err := w.cl.BeginTransaction(); err != nil {
		return fmt.Errorf("kafka changelog of task %d: fence: %w", w.task, err)
	}
	err := w.cl.ProduceSync(ctx, &kgo.Record{Key: []byte("\x00fence"), Partition: w.task}).FirstErr()
	if aerr := w.cl.EndTransaction(ctx, kgo.TryAbort); err == nil {
		err = aerr
	}
	if err != nil {
		return fmt.Errorf("kafka changelog of task %d: fence: %w", w.task, err)
	}
	return nil
}

// ChangelogWriter writes one task's checkpoints, each in one transaction.
// It implements engine.Changelog. A change is a record keyed by the state
// key, its value state.Op.Record: the kind and the value, none for a
// delete (a tombstone, so that compaction can drop the key).
type ChangelogWriter struct {
	cl   *kgo.Client
	task int32
	// open is a transaction a failed Append left to abort first.
	open bool
}

// Append implements engine.Changelog: one transaction per call. A failed
// attempt leaves its transaction open (w.open) for the next call to abort:
// kgo's documented way out of an unconfirmed commit is an abort, which
// bumps the producer epoch and so aborts anything of it still pending at
// the broker (a commit that did land stays; its changes come again in the
// next call's transaction, which restores the same). Append returns when
// ctx ends even if the broker is out of reach: records in flight then stay
// with the client, which the next call (or Close) abandons.
func (w *ChangelogWriter) Append(ctx context.Context, ops []state.Op) (int64, error) {
	if len(ops) == 0 {
		return 0, errors.New("kafka changelog: empty checkpoint")
	}
	if w.open {
		if err := w.cl.AbortBufferedRecords(ctx); err != nil {
			return 0, w.failed("abandon the previous attempt's records", err)
		}
		if err := w.cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
			return 0, w.failed("abort the previous attempt", err)
		}
		w.open = false
	}
	if err := w.cl.BeginTransaction(); err != nil {
		// kgo recovers the producer id from what can be recovered (a
		// transaction the broker aborted on timeout, an id lost in an
		// outage) before it begins; what is left is final.
		if !errors.Is(err, kerr.ProducerFenced) {
			return 0, engine.Permanent(fmt.Errorf("kafka changelog of task %d: begin: %w", w.task, err))
		}
		return 0, w.failed("begin", err)
	}
	w.open = true
	records := make([]*kgo.Record, len(ops))
	for i, op := range ops {
		records[i] = &kgo.Record{Key: op.Key, Value: op.Record(), Partition: w.task}
	}
	if err := w.produce(ctx, records); err != nil {
		return 0, w.failed("produce", err)
	}
	if err := w.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return 0, w.failed("commit", err)
	}
	w.open = false
	return records[len(records)-1].Offset + 1, nil
}

// produce produces records and waits for all of them, or for ctx: kgo's
// ProduceSync waits for records already sent until the broker answers,
// however long it is away.
func (w *ChangelogWriter) produce(ctx context.Context, records []*kgo.Record) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	wg.Add(len(records))
	for _, r := range records {
		w.cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
			wg.Done()
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return first
	case <-ctx.Done():
		return ctx.Err()
	}
}

// failed describes a failed step of a transaction for the engine, which
// retries it unless it is final: ProducerFenced (another producer took the
// task's transactional id: a new owner fenced this one, or the coordinator
// aborted this one's transaction on timeout) wraps engine.ErrFenced; a
// Kafka error that no retry mends (authorization, a record too large, the
// changelog topic deleted under the transaction) is engine.Permanent.
// Invariant: this writer never initializes its transactional id again
// after a fence (only Open does, for an owner the group just assigned the
// task to): doing so would fence the new owner, whose restore has already
// read the changelog.
func (w *ChangelogWriter) failed(step string, err error) error {
	if errors.Is(err, kerr.ProducerFenced) {
		return fmt.Errorf("kafka changelog of task %d: %s: %w, or its transaction outlived transaction.timeout.ms (%s) (%w)",
			w.task, step, engine.ErrFenced, changelogTransactionTimeout, err)
	}
	err = fmt.Errorf("kafka changelog of task %d: %s: %w", w.task, step, err)
	if final(err) {
		return engine.Permanent(err)
	}
	return err
}

// final reports whether err is a Kafka error that retrying cannot mend.
// The errors kgo recovers from in a new transaction are not final
// (UNKNOWN_SERVER_ERROR leaves a commit unconfirmed; the others are undone
// by an abort or a producer id reload). OUT_OF_ORDER_SEQUENCE_NUMBER is
// one of them: a batch the broker lost or reordered (a leader change, a
// retry under load) poisons the transaction, not the producer, and the
// next attempt aborts it first (seen once from kfake under load, on a
// first append).
func final(err error) bool {
	if errors.Is(err, kerr.UnknownTopicID) {
		return true // the changelog topic was recreated: its offsets are not the state's
	}
	ke, ok := errors.AsType[*kerr.Error](err)
	if !ok || ke.Retriable {
		return false
	}
	switch ke {
	case kerr.UnknownServerError, kerr.TransactionAbortable, kerr.InvalidProducerEpoch, kerr.InvalidProducerIDMapping,
		kerr.UnknownProducerID, kerr.InvalidTxnState, kerr.OperationNotAttempted, kerr.ConcurrentTransactions,
		kerr.OutOfOrderSequenceNumber:
		return false
	}
	return true
}

// Close closes the producer.
func (w *ChangelogWriter) Close() error {
	w.cl.Close()
	return nil
}

// restoreBatch bounds the changes applied in one batch during a restore.
const restoreBatch = 20_000

// ReadFrom implements engine.ChangelogReader: the committed changes of
// task from position to the changelog's last stable offset.
func (c *Changelogs) ReadFrom(ctx context.Context, task int32, position int64, fn func(ops []state.Op, next int64) error) error {
	if err := c.ensure(ctx, task); err != nil {
		return err
	}
	ends, err := kadm.NewClient(c.admin).ListCommittedOffsets(ctx, c.cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka changelog %s: end offsets: %w", c.cfg.Topic, err)
	}
	end, _ := ends.Lookup(c.cfg.Topic, task)
	if position > end.Offset {
		return fmt.Errorf("kafka changelog %s partition %d ends at %d, before the local state's position %d: the changelog was recreated or truncated; move the task's state folder away to restore from the changelog as it is", c.cfg.Topic, task, end.Offset, position)
	}
	if position == end.Offset {
		return nil
	}
	src, err := NewSource(SourceConfig{ClientConfig: c.cfg.ClientConfig, Topics: []string{c.cfg.Topic}}, c.log)
	if err != nil {
		return err
	}
	defer src.Close()
	from := position
	if from == 0 {
		from = engine.OffsetEarliest
	}
	var ops []state.Op
	next := position
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		err := fn(ops, next)
		ops = ops[:0]
		return err
	}
	err = src.readRange(ctx, engine.PartitionID{Topic: c.cfg.Topic, Partition: task}, from, end.Offset, true, func(_ engine.PartitionID, r engine.Record) error {
		op, err := state.OpFromRecord(r.Key, r.Value)
		if err != nil {
			return err
		}
		ops = append(ops, op)
		next = r.Offset + 1
		if len(ops) >= restoreBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("kafka changelog %s partition %d: restore from %d: %w", c.cfg.Topic, task, position, err)
	}
	// The position after the last record read; a commit marker after it
	// is skipped when reading on.
	return flush()
}
