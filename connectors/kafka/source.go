// Package kafka connects Tally to Kafka with segmentio/kafka-go: a source
// that reads usage topics partition by partition from offsets the engine
// gives it (the engine's checkpoint, never a consumer group's commits), and
// writers for the rated-usage and dead-letter topics.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/tally-billing/tally/engine"
)

// SourceConfig configures a Source.
type SourceConfig struct {
	Brokers []string
	Topics  []string
	// FetchMaxBytes bounds one fetch response; it bounds the memory of one
	// in-flight batch per partition. Default 4 MiB.
	FetchMaxBytes int
	// FetchMaxWait is how long the broker holds a fetch with no data.
	// Default 250ms; it also bounds how fast a reader notices shutdown.
	FetchMaxWait time.Duration
	// DialTimeout bounds connecting to a broker. Default 10s.
	DialTimeout time.Duration
}

// Source reads usage topics. It implements engine.Source.
type Source struct {
	cfg    SourceConfig
	dialer *kafkago.Dialer
	log    *slog.Logger
}

// Retry bounds for transient broker errors.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

// NewSource returns a source; it connects on first use.
func NewSource(cfg SourceConfig, log *slog.Logger) (*Source, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka source: no brokers")
	}
	if len(cfg.Topics) == 0 {
		return nil, errors.New("kafka source: no topics")
	}
	if cfg.FetchMaxBytes == 0 {
		cfg.FetchMaxBytes = 4 << 20
	}
	if cfg.FetchMaxWait == 0 {
		cfg.FetchMaxWait = 250 * time.Millisecond
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	return &Source{cfg: cfg, dialer: &kafkago.Dialer{Timeout: cfg.DialTimeout, ClientID: "tally"}, log: log}, nil
}

// Partitions lists every partition of the configured topics. A topic that
// does not exist is an error, not an empty list.
func (s *Source) Partitions(ctx context.Context) ([]engine.PartitionID, error) {
	var lastErr error
	for _, broker := range s.cfg.Brokers {
		conn, err := s.dialer.DialContext(ctx, "tcp", broker)
		if err != nil {
			lastErr = err
			continue
		}
		parts, err := conn.ReadPartitions(s.cfg.Topics...)
		conn.Close()
		if err != nil {
			lastErr = err
			continue
		}
		count := make(map[string]int)
		var out []engine.PartitionID
		for _, p := range parts {
			if p.Error != nil {
				return nil, fmt.Errorf("kafka source: topic %s partition %d: %w", p.Topic, p.ID, p.Error)
			}
			count[p.Topic]++
			out = append(out, engine.PartitionID{Topic: p.Topic, Partition: int32(p.ID)})
		}
		for _, t := range s.cfg.Topics {
			if count[t] == 0 {
				return nil, fmt.Errorf("kafka source: topic %q has no partitions on %s: create it first", t, broker)
			}
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].Topic != out[j].Topic {
				return out[i].Topic < out[j].Topic
			}
			return out[i].Partition < out[j].Partition
		})
		return out, nil
	}
	return nil, fmt.Errorf("kafka source: list partitions of %v from brokers %v: %w", s.cfg.Topics, s.cfg.Brokers, lastErr)
}

// Open returns a reader of p from offset (engine.OffsetEarliest for the
// partition's first offset).
func (s *Source) Open(_ context.Context, p engine.PartitionID, offset int64) (engine.PartitionReader, error) {
	return &partitionReader{src: s, id: p, next: offset}, nil
}

// partitionReader reads one partition over one leader connection, one fetch
// response per Fetch call. It is not safe for concurrent use.
type partitionReader struct {
	src    *Source
	id     engine.PartitionID
	next   int64 // next offset to read, or engine.OffsetEarliest
	conn   *kafkago.Conn
	broker int // index of the broker to bootstrap from next
}

// ErrOffsetGone is returned when the offset to resume from is no longer in
// the partition: retention deleted records Tally never read.
var ErrOffsetGone = errors.New("offset no longer in the partition")

func (r *partitionReader) Fetch(ctx context.Context) ([]engine.Record, error) {
	backoff := retryMin
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		records, err := r.fetchOnce(ctx)
		if len(records) > 0 {
			return records, nil
		}
		if err == nil {
			continue // the broker's max wait passed with no data
		}
		if errors.Is(err, kafkago.OffsetOutOfRange) {
			return nil, fmt.Errorf("%s at offset %d: %w: either retention deleted records that were never aggregated, or the state folder belongs to another cluster or topic; nothing is skipped silently, so restore the records or start from a fresh state folder deliberately", r.id, r.next, ErrOffsetGone)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		r.src.log.Warn("kafka fetch failed; reconnecting", "partition", r.id.String(), "offset", r.next, "retry_in", backoff, "err", err)
		r.closeConn()
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		backoff = min(backoff*2, retryMax)
	}
}

func (r *partitionReader) fetchOnce(ctx context.Context) ([]engine.Record, error) {
	if r.conn == nil {
		brokers := r.src.cfg.Brokers
		broker := brokers[r.broker%len(brokers)]
		r.broker++
		conn, err := r.src.dialer.DialLeader(ctx, "tcp", broker, r.id.Topic, int(r.id.Partition))
		if err != nil {
			return nil, fmt.Errorf("dial leader via %s: %w", broker, err)
		}
		if r.next == engine.OffsetEarliest {
			first, err := conn.ReadFirstOffset()
			if err != nil {
				conn.Close()
				return nil, fmt.Errorf("read first offset: %w", err)
			}
			r.next = first
		}
		if _, err := conn.Seek(r.next, kafkago.SeekAbsolute|kafkago.SeekDontCheck); err != nil {
			conn.Close()
			return nil, fmt.Errorf("seek to %d: %w", r.next, err)
		}
		r.conn = conn
	}
	cfg := r.src.cfg
	if err := r.conn.SetReadDeadline(time.Now().Add(cfg.FetchMaxWait + cfg.DialTimeout)); err != nil {
		return nil, err
	}
	batch := r.conn.ReadBatchWith(kafkago.ReadBatchConfig{MinBytes: 1, MaxBytes: cfg.FetchMaxBytes, MaxWait: cfg.FetchMaxWait})
	var records []engine.Record
	var readErr error
	for {
		msg, err := batch.ReadMessage()
		if err != nil {
			readErr = err
			break
		}
		if msg.Offset < r.next {
			continue // a compressed batch may start before the requested offset
		}
		records = append(records, engine.Record{Offset: msg.Offset, Value: msg.Value, HighWater: batch.HighWaterMark(), Timestamp: msg.Time})
		r.next = msg.Offset + 1
	}
	closeErr := batch.Close()
	if errors.Is(readErr, io.EOF) {
		readErr = nil
	}
	if readErr == nil {
		readErr = closeErr
	}
	if readErr != nil {
		var kerr kafkago.Error
		if errors.As(readErr, &kerr) && kerr == kafkago.RequestTimedOut && len(records) == 0 {
			return nil, nil
		}
	}
	return records, readErr
}

func (r *partitionReader) closeConn() {
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
}

func (r *partitionReader) Close() error {
	r.closeConn()
	return nil
}

// ReadToEnd reads every partition of the configured topics from its first
// offset to its last at the time of the call, in offset order, and calls fn
// with each record. Audits use it to re-read the source.
func (s *Source) ReadToEnd(ctx context.Context, fn func(p engine.PartitionID, rec engine.Record) error) error {
	parts, err := s.Partitions(ctx)
	if err != nil {
		return err
	}
	for _, p := range parts {
		end, err := s.lastOffset(ctx, p)
		if err != nil {
			return err
		}
		r := &partitionReader{src: s, id: p, next: engine.OffsetEarliest}
		for next := int64(-1); next < end-1; {
			records, err := r.Fetch(ctx)
			if err != nil {
				r.Close()
				return err
			}
			for _, rec := range records {
				if rec.Offset >= end {
					break
				}
				if err := fn(p, rec); err != nil {
					r.Close()
					return err
				}
				next = rec.Offset
			}
			if len(records) > 0 && records[len(records)-1].Offset >= end-1 {
				break
			}
		}
		r.Close()
	}
	return nil
}

// lastOffset returns the offset after p's last record; a partition whose
// first offset equals it is empty.
func (s *Source) lastOffset(ctx context.Context, p engine.PartitionID) (int64, error) {
	var lastErr error
	for _, broker := range s.cfg.Brokers {
		conn, err := s.dialer.DialLeader(ctx, "tcp", broker, p.Topic, int(p.Partition))
		if err != nil {
			lastErr = err
			continue
		}
		first, last, err := conn.ReadOffsets()
		conn.Close()
		if err != nil {
			lastErr = err
			continue
		}
		if first == last {
			return 0, nil // empty: nothing to read
		}
		return last, nil
	}
	return 0, fmt.Errorf("kafka source: offsets of %s: %w", p, lastErr)
}
