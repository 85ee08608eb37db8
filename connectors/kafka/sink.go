package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kgo"
)

// WriterConfig configures the rated-usage and dead-letter writers.
type WriterConfig struct {
	ClientConfig
	Topic string
}

// writer produces to one topic with an idempotent producer (acks from all
// in-sync replicas, no duplicates from its own retries).
type writer struct {
	cl    *kgo.Client
	topic string
}

func newWriter(cfg WriterConfig, log *slog.Logger) (*writer, error) {
	cl, err := kgo.NewClient(append(cfg.opts(log),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(fnvPartitioner()),
		kgo.ProducerLinger(0),
		// A stop must not wait for a broker that does not answer: records
		// in flight may then be written twice, which sinks absorb (rows
		// are idempotent on identity and revision, dead letters on their
		// source position).
		kgo.AllowIdempotentProduceCancellation(),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka writer for %s: %w", cfg.Topic, err)
	}
	return &writer{cl: cl, topic: cfg.Topic}, nil
}

// produce writes records and waits until every one is acknowledged.
func (w *writer) produce(ctx context.Context, records []*kgo.Record) error {
	return w.cl.ProduceSync(ctx, records...).FirstErr()
}

func (w *writer) Close() error {
	w.cl.Close()
	return nil
}

// fnvPartitioner places a key where kafka-go's Hash balancer (and Sarama's
// default) placed it: FNV-1a of the key, as an int32, modulo the partition
// count. Every revision of a row lands in the partition of the earlier ones,
// also those written before Tally moved to kgo, so compaction and "keep the
// highest revision" both work per partition.
func fnvPartitioner() kgo.Partitioner {
	return kgo.BasicConsistentPartitioner(func(string) func(r *kgo.Record, n int) int {
		return func(r *kgo.Record, n int) int {
			h := uint32(2166136261)
			for _, c := range r.Key {
				h = (h ^ uint32(c)) * 16777619
			}
			p := int32(h) % int32(n)
			if p < 0 {
				p = -p
			}
			return int(p)
		}
	})
}

// RatedSink writes rated rows to the rated-usage topic, keyed by row
// identity, as JSON with the revision also in a header. Consumers keep, per
// key, the message with the highest revision.
type RatedSink struct {
	*writer
}

// NewRatedSink returns a sink for cfg.Topic.
func NewRatedSink(cfg WriterConfig, log *slog.Logger) (*RatedSink, error) {
	w, err := newWriter(cfg, log)
	if err != nil {
		return nil, err
	}
	return &RatedSink{w}, nil
}

// Name implements engine.Sink.
func (s *RatedSink) Name() string { return "kafka:" + s.topic }

// Write implements engine.Sink.
func (s *RatedSink) Write(ctx context.Context, rows []engine.RatedRow) error {
	records := make([]kgo.Record, len(rows))
	ptrs := make([]*kgo.Record, len(rows))
	headers := make([]kgo.RecordHeader, len(rows))
	// Every row's JSON, key and revision go into one buffer, kept until
	// every record is acknowledged (a slice taken before the buffer grows
	// keeps its bytes).
	buf := make([]byte, 0, 480*len(rows))
	for i := range rows {
		start := len(buf)
		var err error
		if buf, err = rows[i].AppendJSON(buf); err != nil {
			return fmt.Errorf("kafka rated sink: encode row: %w", err)
		}
		value := buf[start:len(buf):len(buf)]
		start = len(buf)
		buf = rows[i].AppendIdentity(buf)
		key := buf[start:len(buf):len(buf)]
		start = len(buf)
		buf = strconv.AppendUint(buf, rows[i].Revision, 10)
		headers[i] = kgo.RecordHeader{Key: "tally-revision", Value: buf[start:len(buf):len(buf)]}
		records[i] = kgo.Record{Key: key, Value: value, Headers: headers[i : i+1 : i+1]}
		ptrs[i] = &records[i]
	}
	if err := s.produce(ctx, ptrs); err != nil {
		return fmt.Errorf("kafka rated sink: write %d rows to %s: %w", len(rows), s.topic, err)
	}
	return nil
}

// DeadLetterSink writes dead letters: the original bytes as the value, keyed
// by source topic/partition/offset (so a re-delivery is recognisable), with
// the reason and source position in headers.
type DeadLetterSink struct {
	*writer
}

// NewDeadLetterSink returns a sink for cfg.Topic.
func NewDeadLetterSink(cfg WriterConfig, log *slog.Logger) (*DeadLetterSink, error) {
	w, err := newWriter(cfg, log)
	if err != nil {
		return nil, err
	}
	return &DeadLetterSink{w}, nil
}

// Name implements engine.DeadLetterSink.
func (s *DeadLetterSink) Name() string { return "kafka:" + s.topic }

// Header names on dead-letter messages.
const (
	HeaderReason          = "tally-reason"
	HeaderDetail          = "tally-detail"
	HeaderSourceTopic     = "tally-source-topic"
	HeaderSourcePartition = "tally-source-partition"
	HeaderSourceOffset    = "tally-source-offset"
)

// WriteDeadLetters implements engine.DeadLetterSink.
func (s *DeadLetterSink) WriteDeadLetters(ctx context.Context, letters []engine.DeadLetter) error {
	records := make([]*kgo.Record, len(letters))
	for i, d := range letters {
		partition, offset := strconv.Itoa(int(d.Partition)), strconv.FormatInt(d.Offset, 10)
		records[i] = &kgo.Record{
			Key:   []byte(d.Topic + "/" + partition + "/" + offset),
			Value: d.Raw,
			Headers: []kgo.RecordHeader{
				{Key: HeaderReason, Value: []byte(d.Reason)},
				{Key: HeaderDetail, Value: []byte(d.Detail)},
				{Key: HeaderSourceTopic, Value: []byte(d.Topic)},
				{Key: HeaderSourcePartition, Value: []byte(partition)},
				{Key: HeaderSourceOffset, Value: []byte(offset)},
			},
		}
	}
	if err := s.produce(ctx, records); err != nil {
		return fmt.Errorf("kafka dead-letter sink: write %d letters to %s: %w", len(letters), s.topic, err)
	}
	return nil
}

// ActionSink writes provisioning actions to the provisioning topic as
// JSON, keyed by customer (a customer's actions stay in order in one
// partition), with the action's idempotency key in a header: consumers
// ignore an id they have seen (a crash re-delivers the last ones).
type ActionSink struct {
	*writer
}

// NewActionSink returns a sink for cfg.Topic.
func NewActionSink(cfg WriterConfig, log *slog.Logger) (*ActionSink, error) {
	w, err := newWriter(cfg, log)
	if err != nil {
		return nil, err
	}
	return &ActionSink{w}, nil
}

// Name implements engine.ActionSink.
func (s *ActionSink) Name() string { return "kafka:" + s.topic }

// WriteActions implements engine.ActionSink.
func (s *ActionSink) WriteActions(ctx context.Context, actions []engine.ProvisioningAction) error {
	records := make([]*kgo.Record, len(actions))
	for i := range actions {
		value, err := json.Marshal(&actions[i])
		if err != nil {
			return fmt.Errorf("kafka action sink: encode action: %w", err)
		}
		records[i] = &kgo.Record{Key: []byte(actions[i].Customer), Value: value,
			Headers: []kgo.RecordHeader{{Key: "tally-action-id", Value: []byte(actions[i].ID)}}}
	}
	if err := s.produce(ctx, records); err != nil {
		return fmt.Errorf("kafka action sink: write %d actions to %s: %w", len(actions), s.topic, err)
	}
	return nil
}
