package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/state"
	"github.com/twmb/franz-go/pkg/kadm"
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
// It implements engine.Changelog.
type ChangelogWriter struct {
	cl   *kgo.Client
	task int32
}

// A change is a record keyed by the state key. Its value is the kind and
// the value (a set: 's' + value; a range delete: 'r' + end key); a delete
// is a tombstone (no value), so that compaction can drop the key.
func encodeOp(op state.Op) []byte {
	switch op.Kind {
	case state.OpDelete:
		return nil
	default:
		return append([]byte{byte(op.Kind)}, op.Value...)
	}
}

func decodeOp(key, value []byte) (state.Op, error) {
	if len(value) == 0 {
		return state.Op{Kind: state.OpDelete, Key: key}, nil
	}
	switch k := state.OpKind(value[0]); k {
	case state.OpSet, state.OpDeleteRange:
		return state.Op{Kind: k, Key: key, Value: value[1:]}, nil
	}
	return state.Op{}, fmt.Errorf("changelog record %q: unknown change kind %q", key, value[0])
}

// Append implements engine.Changelog.
func (w *ChangelogWriter) Append(ctx context.Context, ops []state.Op) (int64, error) {
	if len(ops) == 0 {
		return 0, errors.New("kafka changelog: empty checkpoint")
	}
	if err := w.cl.BeginTransaction(); err != nil {
		return 0, fmt.Errorf("kafka changelog of task %d: begin: %w", w.task, err)
	}
	records := make([]*kgo.Record, len(ops))
	for i, op := range ops {
		records[i] = &kgo.Record{Key: op.Key, Value: encodeOp(op), Partition: w.task}
	}
	results := w.cl.ProduceSync(ctx, records...)
	if err := results.FirstErr(); err != nil {
		_ = w.cl.EndTransaction(ctx, kgo.TryAbort)
		return 0, fmt.Errorf("kafka changelog of task %d: produce: %w", w.task, err)
	}
	// An error here may hide a commit: the engine stops, and the restore
	// at the next start reads whatever the changelog holds.
	if err := w.cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		return 0, fmt.Errorf("kafka changelog of task %d: commit: %w", w.task, err)
	}
	return results[len(results)-1].Record.Offset + 1, nil
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
		op, err := decodeOp(r.Key, r.Value)
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
