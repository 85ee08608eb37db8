package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// SourceConfig configures a Source.
type SourceConfig struct {
	ClientConfig
	Topics []string
	// FetchMaxBytes bounds what one fetch brings of one partition; with
	// the engine's queue bounds it bounds memory in flight. Default 4 MiB.
	FetchMaxBytes int
	// FetchMaxWait is how long the broker holds a fetch with no data.
	// Default 250ms.
	FetchMaxWait time.Duration
	// ReadUncommitted also reads records of open and aborted transactions.
	// The default, read committed, never shows a record of an aborted
	// transaction and holds back those of an open one until it commits.
	ReadUncommitted bool
	// Repartitioned says the topics are written by the Repartitioner: a
	// record's source headers name where it was produced (Record.Origin).
	// Elsewhere the same headers (a dead letter fed back, say) are not
	// trusted.
	Repartitioned bool
}

// Source reads usage topics with one kgo client in direct mode: the engine
// opens each partition at the offset of its checkpoint. One goroutine polls
// the client and hands each partition's records to that partition's reader,
// so the engine reads partitions side by side as it did with a connection
// each, over a handful of broker connections.
type Source struct {
	cfg SourceConfig
	cl  *kgo.Client
	adm *kadm.Client
	log *slog.Logger

	mu      sync.Mutex
	readers map[engine.PartitionID]*partitionReader
	polling bool
	stop    context.CancelFunc
	done    chan struct{}
}

// NewSource returns a source; kgo connects on first use.
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
	isolation := kgo.ReadCommitted()
	if cfg.ReadUncommitted {
		isolation = kgo.ReadUncommitted()
	}
	opts := append(cfg.opts(log),
		kgo.FetchIsolationLevel(isolation),
		// Commit and abort markers come back so that a reader's position
		// moves past them (a partition whose last record is a marker is
		// caught up); the reader never hands them on as records.
		kgo.KeepControlRecords(),
		// An offset that is gone is an error, never a silent jump to the
		// start or the end of the partition.
		kgo.ConsumeResetOffset(kgo.NoResetOffset()),
		kgo.FetchMaxPartitionBytes(int32(cfg.FetchMaxBytes)),
		kgo.FetchMaxBytes(int32(4*cfg.FetchMaxBytes)),
		kgo.FetchMaxWait(cfg.FetchMaxWait),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka source: %w", err)
	}
	return &Source{cfg: cfg, cl: cl, adm: kadm.NewClient(cl), log: log, readers: make(map[engine.PartitionID]*partitionReader)}, nil
}

// Close stops polling and closes the client.
func (s *Source) Close() error {
	s.mu.Lock()
	stop, done := s.stop, s.done
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	s.cl.Close()
	return nil
}

// Partitions lists every partition of the configured topics, sorted. A
// topic that does not exist is an error, not an empty list.
func (s *Source) Partitions(ctx context.Context) ([]engine.PartitionID, error) {
	details, err := s.topics(ctx)
	if err != nil {
		return nil, err
	}
	var out []engine.PartitionID
	for _, t := range details {
		for _, p := range t.Partitions {
			out = append(out, engine.PartitionID{Topic: t.Topic, Partition: p.Partition})
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

// TopicIDs returns each configured topic's Kafka topic ID (a new one when a
// topic is deleted and created again under the same name), as hex; empty
// for a broker without topic IDs.
func (s *Source) TopicIDs(ctx context.Context) (map[string]string, error) {
	details, err := s.topics(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(details))
	for _, t := range details {
		if t.ID != (kadm.TopicID{}) {
			out[t.Topic] = t.ID.String()
		}
	}
	return out, nil
}

func (s *Source) topics(ctx context.Context) (kadm.TopicDetails, error) {
	// Uncached: kadm answers from metadata up to MetadataMinAge (5 s)
	// old, and a listing that misses a partition just added would start
	// its task on nothing. WithAuthorizedOps is kadm's way to bypass the
	// cache.
	details, err := s.adm.ListTopics(kadm.WithAuthorizedOps(ctx), s.cfg.Topics...)
	if err != nil {
		return nil, fmt.Errorf("kafka source: list topics %v from brokers %v: %w", s.cfg.Topics, s.cfg.Brokers, err)
	}
	for _, t := range s.cfg.Topics {
		d, ok := details[t]
		switch {
		case !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition):
			return nil, fmt.Errorf("kafka source: topic %q does not exist on %v: create it first (config key kafka.topics)", t, s.cfg.Brokers)
		case d.Err != nil:
			return nil, fmt.Errorf("kafka source: topic %q: %w", t, d.Err)
		case len(d.Partitions) == 0:
			return nil, fmt.Errorf("kafka source: topic %q has no partitions on %v: create it first", t, s.cfg.Brokers)
		}
	}
	return details, nil
}

// ErrOffsetGone is returned when the offset to resume from is no longer in
// the partition: retention deleted records Tally never read.
var ErrOffsetGone = errors.New("offset no longer in the partition")

// Open returns a reader of p from offset (engine.OffsetEarliest for the
// partition's first offset).
func (s *Source) Open(_ context.Context, p engine.PartitionID, offset int64) (engine.PartitionReader, error) {
	r := &partitionReader{src: s, id: p, next: offset, ch: make(chan fetched, 2), closed: make(chan struct{})}
	at := kgo.NewOffset().AtStart()
	if offset != engine.OffsetEarliest {
		at = kgo.NewOffset().At(offset)
	}
	s.mu.Lock()
	if _, ok := s.readers[p]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("kafka source: %s is already open", p)
	}
	s.readers[p] = r
	if !s.polling {
		s.polling = true
		ctx, stop := context.WithCancel(context.Background())
		s.stop, s.done = stop, make(chan struct{})
		go s.poll(ctx)
	}
	s.mu.Unlock()
	s.cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{p.Topic: {p.Partition: at}})
	return r, nil
}

// fetched is one partition's share of a poll.
type fetched struct {
	records []*kgo.Record
	// highWater is the partition's high watermark. Reading committed, the
	// records of an open transaction wait behind the last stable offset,
	// but they are not "nothing to give": a partition counts as caught up
	// only at the high watermark, which the transaction's marker reaches.
	highWater int64
	logStart  int64
	err       error
}

// poll hands every partition's fetched records to its reader, in order.
// A reader that is slow holds the poll (and so every partition) back: the
// engine's queues bound memory, not this loop.
func (s *Source) poll(ctx context.Context) {
	defer close(s.done)
	for {
		fetches := s.cl.PollFetches(ctx)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return
		}
		for _, ft := range fetches {
			for _, t := range ft.Topics {
				for i := range t.Partitions {
					fp := &t.Partitions[i]
					if fp.Partition < 0 {
						// A client-level error (a context ended, or a
						// response too large); kgo retries what it can.
						if fp.Err != nil && ctx.Err() == nil && !errors.Is(fp.Err, context.Canceled) {
							s.log.Warn("kafka fetch", "err", fp.Err)
						}
						continue
					}
					s.mu.Lock()
					r := s.readers[engine.PartitionID{Topic: t.Topic, Partition: fp.Partition}]
					s.mu.Unlock()
					if r == nil {
						continue // closed since the fetch was asked for
					}
					f := fetched{records: fp.Records, highWater: fp.HighWatermark, logStart: fp.LogStartOffset, err: fp.Err}
					select {
					case r.ch <- f:
					case <-r.closed:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}
}

// partitionReader is one partition's end of the poll.
type partitionReader struct {
	src    *Source
	id     engine.PartitionID
	next   int64 // next offset to read, or engine.OffsetEarliest
	ch     chan fetched
	closed chan struct{}
	once   sync.Once
}

// Fetch implements engine.PartitionReader. Transaction markers come back
// as control records (no value): they move the position, nothing else.
func (r *partitionReader) Fetch(ctx context.Context) ([]engine.Record, error) {
	var f fetched
	select {
	case f = <-r.ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, r.fatal(f.err)
	}
	// Invariant: a partition opened at an offset is read from exactly that
	// offset. kgo may place a partition it has no metadata for yet by
	// listing offsets and clamping to the log's start or end, without
	// NoResetOffset's error; both are caught here, never skipped.
	if r.next >= 0 && f.logStart > r.next {
		return nil, r.fatal(kerr.OffsetOutOfRange)
	}
	out := make([]engine.Record, 0, len(f.records))
	repartitioned := r.src.cfg.Repartitioned
	for _, rec := range f.records {
		if r.next >= 0 && rec.Offset < r.next {
			return nil, fmt.Errorf("%s: record at offset %d, before the offset %d Tally resumes from: the log is behind the state (records lost on the broker, or the state folder belongs to another cluster); nothing is skipped silently: recover the cluster, or start from a fresh state folder deliberately", r.id, rec.Offset, r.next)
		}
		r.next = rec.Offset + 1
		var origin engine.Position
		if repartitioned {
			origin = originOf(rec.Headers)
		}
		out = append(out, engine.Record{Offset: rec.Offset, Key: rec.Key, Value: rec.Value, HighWater: f.highWater,
			Timestamp: rec.Timestamp, Control: rec.Attrs.IsControl(), LogStart: f.logStart, Origin: origin})
	}
	return out, nil
}

// originOf reads the position a re-keyed record was produced at from the
// headers the repartitioner gave it; none when they are absent or do not
// parse (then the record is named where it was read).
func originOf(headers []kgo.RecordHeader) engine.Position {
	if len(headers) == 0 {
		return engine.Position{}
	}
	var pos engine.Position
	var partition, offset string
	for _, h := range headers {
		switch h.Key {
		case HeaderSourceTopic:
			pos.Topic = string(h.Value)
		case HeaderSourcePartition:
			partition = string(h.Value)
		case HeaderSourceOffset:
			offset = string(h.Value)
		}
	}
	p, err1 := strconv.ParseInt(partition, 10, 32)
	o, err2 := strconv.ParseInt(offset, 10, 64)
	if pos.Topic == "" || err1 != nil || err2 != nil {
		return engine.Position{}
	}
	pos.Partition, pos.Offset = int32(p), o
	return pos
}

// fatal explains a partition error kgo does not retry.
func (r *partitionReader) fatal(err error) error {
	switch {
	case errors.Is(err, kerr.OffsetOutOfRange):
		return fmt.Errorf("%s at offset %d: %w: either retention deleted records that were never aggregated, or the state folder belongs to another cluster or topic; nothing is skipped silently, so restore the records or start from a fresh state folder deliberately", r.id, r.next, ErrOffsetGone)
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("%s: %w: the topic or partition is gone (deleted?); Tally does not skip to a recreated topic: see README, Recovery", r.id, err)
	default:
		var loss *kgo.ErrDataLoss
		if errors.As(err, &loss) {
			return fmt.Errorf("%s: the broker lost records Tally had read (%w); its state is ahead of the log: recover the cluster, or start from a fresh state folder deliberately", r.id, err)
		}
		return fmt.Errorf("%s at offset %d: %w", r.id, r.next, err)
	}
}

// Close stops reading the partition.
func (r *partitionReader) Close() error {
	r.once.Do(func() {
		close(r.closed)
		s := r.src
		s.mu.Lock()
		delete(s.readers, r.id)
		s.mu.Unlock()
		s.cl.RemoveConsumePartitions(map[string][]int32{r.id.Topic: {r.id.Partition}})
	})
	return nil
}
