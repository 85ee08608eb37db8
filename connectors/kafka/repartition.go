package kafka

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// RepartitionConfig configures the re-keying of usage that producers did
// not key by customer.
type RepartitionConfig struct {
	ClientConfig
	// Group is the consumer group of the re-keying stage (its own: it
	// reads the usage topics, the tasks read Topic).
	Group string
	// Inputs are the usage topics; Topic the internal topic written, keyed
	// by customer with murmur2, whose partitions are the tasks.
	Inputs []string
	Topic  string
	// TransactionalID is this instance's producer id: stable across its
	// restarts, so that a restart fences what its predecessor left open.
	TransactionalID string
	// InstanceID, when set, makes the stage's member static (KIP-345), as
	// kafka.instanceId does for the tasks' group.
	InstanceID     string
	SessionTimeout time.Duration // default 10s
	// Customer finds a record's customer; every is set for a record every
	// partition must get (a shared service's SLA event: each task
	// measures it for its customers); ok false for a record that is not
	// usage (it goes on unkeyed, and its task dead-letters it).
	Customer func(value []byte) (customer string, every, ok bool)
	Spec     TopicSpec
}

// Repartitioner re-keys usage by customer, exactly once: it reads the usage
// topics in its own consumer group (read committed) and writes each record,
// keyed by its customer, to the repartition topic, in a transaction that
// also commits the group's offsets of what it read (a GroupTransactSession,
// KIP-447: a member that lost its partitions cannot commit).
type Repartitioner struct {
	cfg RepartitionConfig
	// partitions is the repartition topic's partition count (records
	// for every partition are copied to each).
	partitions int32
	log        *slog.Logger
	sess       *kgo.GroupTransactSession
	closeOnce  sync.Once
}

// Close closes the stage if Run did not (a build that failed after
// creating it, whose client already joined the stage's group).
func (r *Repartitioner) Close() error {
	r.closeOnce.Do(r.sess.Close)
	return nil
}

// NewRepartitioner creates the repartition topic when missing (Spec) and
// returns the stage; Run runs it.
func NewRepartitioner(ctx context.Context, cfg RepartitionConfig, log *slog.Logger) (*Repartitioner, error) {
	if _, err := EnsureTopics(ctx, cfg.ClientConfig, cfg.Spec, log, cfg.Topic); err != nil {
		var te *TopicError
		if errors.As(err, &te) {
			return nil, fmt.Errorf("kafka.repartitionPartitions: %w", err)
		}
		return nil, err
	}
	partitions, err := topicPartitions(ctx, cfg.ClientConfig, log, cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("kafka repartition: %w", err)
	}
	opts := cfg.opts(log)
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	sess, err := kgo.NewGroupTransactSession(append(opts,
		kgo.SessionTimeout(cmp.Or(cfg.SessionTimeout, 10*time.Second)),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Inputs...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.TransactionalID(cfg.TransactionalID),
		kgo.TransactionTimeout(10*time.Second),
		kgo.DefaultProduceTopic(cfg.Topic),
		// Kafka's murmur2 of the customer: the tasks check it. A record
		// for every partition goes where its copy is addressed.
		kgo.RecordPartitioner(copiesPartitioner{kgo.StickyKeyPartitioner(nil)}),
		kgo.ProducerLinger(0),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka repartition: %w", err)
	}
	return &Repartitioner{cfg: cfg, partitions: partitions, log: log, sess: sess}, nil
}

// Run re-keys until ctx ends; an error is fatal.
func (r *Repartitioner) Run(ctx context.Context) error {
	defer r.Close()
	for {
		fetches := r.sess.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return nil
		}
		var fatal error
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) && fatal == nil {
				fatal = fmt.Errorf("kafka repartition: read %s/%d: %w", topic, p, err)
			}
		})
		if fatal != nil {
			return fatal
		}
		if fetches.NumRecords() == 0 {
			continue
		}
		if err := r.sess.Begin(); err != nil {
			return fmt.Errorf("kafka repartition: begin: %w", err)
		}
		var mu sync.Mutex
		var produceErr error
		fetches.EachRecord(func(rec *kgo.Record) {
			if rec.Attrs.IsControl() {
				return
			}
			// Where the record was produced, for its dead letters (the
			// tasks' reader turns these headers into engine.Record.Origin).
			out := &kgo.Record{Value: rec.Value, Timestamp: rec.Timestamp, Headers: []kgo.RecordHeader{
				{Key: HeaderSourceTopic, Value: []byte(rec.Topic)},
				{Key: HeaderSourcePartition, Value: strconv.AppendInt(nil, int64(rec.Partition), 10)},
				{Key: HeaderSourceOffset, Value: strconv.AppendInt(nil, rec.Offset, 10)},
			}}
			done := func(_ *kgo.Record, err error) {
				mu.Lock()
				if err != nil && produceErr == nil {
					produceErr = err
				}
				mu.Unlock()
			}
			c, every, ok := r.cfg.Customer(rec.Value)
			if every {
				for p := range r.partitions {
					cp := *out
					cp.Partition, cp.Context = p, context.WithValue(ctx, copyTo{}, true)
					r.sess.Produce(ctx, &cp, done)
				}
				return
			}
			if ok {
				out.Key = []byte(c)
			}
			r.sess.Produce(ctx, out, done)
		})
		// End flushes first, so every produce above has its result; a
		// failed one turns the commit into an abort (End aborts when a
		// record failed).
		committed, err := r.sess.End(ctx, kgo.TryCommit)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("kafka repartition: end transaction: %w", err)
		}
		if !committed {
			// A rebalance or an error: nothing of this batch is visible,
			// and the group's offsets did not move; the partitions' next
			// owner (maybe this member again) reads them again.
			r.log.Warn("repartition transaction aborted; its records are read again", "produce_err", produceErr)
		}
	}
}

// copyTo marks, in a record's Context, a copy addressed to its Partition.
type copyTo struct{}

// copiesPartitioner partitions a copy (copyTo) by its Partition, any
// other record as keyed does.
type copiesPartitioner struct{ keyed kgo.Partitioner }

func (p copiesPartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return copiesTopicPartitioner{p.keyed.ForTopic(topic)}
}

type copiesTopicPartitioner struct{ keyed kgo.TopicPartitioner }

func isCopy(r *kgo.Record) bool {
	return r.Context != nil && r.Context.Value(copyTo{}) != nil
}

func (p copiesTopicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	return isCopy(r) || p.keyed.RequiresConsistency(r)
}

func (p copiesTopicPartitioner) Partition(r *kgo.Record, n int) int {
	if isCopy(r) && int(r.Partition) < n {
		return int(r.Partition)
	}
	return p.keyed.Partition(r, n)
}

// topicPartitions is topic's partition count.
func topicPartitions(ctx context.Context, cfg ClientConfig, log *slog.Logger, topic string) (int32, error) {
	cl, err := kgo.NewClient(cfg.opts(log)...)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	details, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("list topic %s: %w", topic, err)
	}
	d, ok := details[topic]
	if !ok || d.Err != nil || len(d.Partitions) == 0 {
		return 0, fmt.Errorf("topic %s: no partitions known (%v)", topic, d.Err)
	}
	return int32(len(d.Partitions)), nil
}
