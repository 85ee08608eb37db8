package kafka

import (
	"context"
	"fmt"
	"strconv"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/tally-billing/tally/engine"
)

// WriterConfig configures the rated-usage and dead-letter writers.
type WriterConfig struct {
	Brokers []string
	Topic   string
	// BatchRows bounds the messages kafka-go groups per partition request.
	BatchRows int
}

// maxBatchBytes keeps a record batch under Kafka's default
// message.max.bytes (1,048,588), leaving room for the batch header.
const maxBatchBytes = 1_000_000

// produceBatchRows bounds the messages of one produce request.
const produceBatchRows = 1000

func newWriter(cfg WriterConfig) *kafkago.Writer {
	if cfg.BatchRows == 0 {
		cfg.BatchRows = 10000
	}
	return &kafkago.Writer{
		Addr:  kafkago.TCP(cfg.Brokers...),
		Topic: cfg.Topic,
		// Hash by key: every revision of a row lands in the same partition,
		// in order, so compaction and "keep the highest revision" both work.
		Balancer:     &kafkago.Hash{},
		RequiredAcks: kafkago.RequireAll,
		// kafka-go allocates room for BatchSize messages (152 B each) for
		// every batch it starts, one per partition a write touches, whatever
		// the batch ends up holding: 10,000 cost 1.5 MB a batch and were the
		// engine's largest allocation (bench/RESULTS.md). 1,000 rows of a
		// few hundred bytes fill most of a 1 MB produce request anyway.
		BatchSize: min(cfg.BatchRows, produceBatchRows),
		// One produce batch must fit the broker's message.max.bytes (1 MB by
		// default, kfake included); kafka-go splits larger writes.
		BatchBytes: maxBatchBytes,
		// WriteMessages is synchronous; a long BatchTimeout would only delay
		// the last partial batch of each call.
		BatchTimeout: 5 * time.Millisecond,
		MaxAttempts:  3,
	}
}

// RatedSink writes rated rows to the rated-usage topic, keyed by row
// identity, as JSON with the revision also in a header. Consumers keep, per
// key, the message with the highest revision.
type RatedSink struct {
	w *kafkago.Writer
}

// NewRatedSink returns a sink for cfg.Topic.
func NewRatedSink(cfg WriterConfig) *RatedSink { return &RatedSink{w: newWriter(cfg)} }

// Name implements engine.Sink.
func (s *RatedSink) Name() string { return "kafka:" + s.w.Topic }

// Write implements engine.Sink.
func (s *RatedSink) Write(ctx context.Context, rows []engine.RatedRow) error {
	msgs := make([]kafkago.Message, len(rows))
	headers := make([]kafkago.Header, len(rows))
	// Every row's JSON goes into one buffer (kafka-go copies messages into
	// its requests before WriteMessages returns).
	buf := make([]byte, 0, 400*len(rows))
	for i := range rows {
		start := len(buf)
		var err error
		if buf, err = rows[i].AppendJSON(buf); err != nil {
			return fmt.Errorf("kafka rated sink: encode row: %w", err)
		}
		value := buf[start:len(buf):len(buf)]
		headers[i] = kafkago.Header{Key: "tally-revision", Value: strconv.AppendUint(nil, rows[i].Revision, 10)}
		msgs[i] = kafkago.Message{Key: []byte(rows[i].Identity()), Value: value, Headers: headers[i : i+1 : i+1]}
	}
	if err := s.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafka rated sink: write %d rows to %s: %w", len(rows), s.w.Topic, err)
	}
	return nil
}

// Close flushes and closes the writer.
func (s *RatedSink) Close() error { return s.w.Close() }

// DeadLetterSink writes dead letters: the original bytes as the value, keyed
// by source topic/partition/offset (so a re-delivery is recognisable), with
// the reason and source position in headers.
type DeadLetterSink struct {
	w *kafkago.Writer
}

// NewDeadLetterSink returns a sink for cfg.Topic.
func NewDeadLetterSink(cfg WriterConfig) *DeadLetterSink {
	return &DeadLetterSink{w: newWriter(cfg)}
}

// Name implements engine.DeadLetterSink.
func (s *DeadLetterSink) Name() string { return "kafka:" + s.w.Topic }

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
	msgs := make([]kafkago.Message, len(letters))
	for i, d := range letters {
		partition, offset := strconv.Itoa(int(d.Partition)), strconv.FormatInt(d.Offset, 10)
		msgs[i] = kafkago.Message{
			Key:   []byte(d.Topic + "/" + partition + "/" + offset),
			Value: d.Raw,
			Headers: []kafkago.Header{
				{Key: HeaderReason, Value: []byte(d.Reason)},
				{Key: HeaderDetail, Value: []byte(d.Detail)},
				{Key: HeaderSourceTopic, Value: []byte(d.Topic)},
				{Key: HeaderSourcePartition, Value: []byte(partition)},
				{Key: HeaderSourceOffset, Value: []byte(offset)},
			},
		}
	}
	if err := s.w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("kafka dead-letter sink: write %d letters to %s: %w", len(letters), s.w.Topic, err)
	}
	return nil
}

// Close flushes and closes the writer.
func (s *DeadLetterSink) Close() error { return s.w.Close() }
