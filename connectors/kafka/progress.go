package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Progress shares every task's time between the instances of a group: a
// compacted topic keyed by task holds each task's watermark and whether it
// is idle, as its owner last reported. A Node moves its idle tasks' time by
// the whole group's, as one engine reading every partition would. It
// implements engine.Progress.
type Progress struct {
	topic string
	cl    *kgo.Client
	log   *slog.Logger

	mu     sync.Mutex
	latest map[int32]engine.TaskProgress
}

// NewProgress starts reading topic (created, compacted, when missing) and
// returns the progress; Close stops it.
func NewProgress(ctx context.Context, cfg ClientConfig, topic string, spec TopicSpec, log *slog.Logger) (*Progress, error) {
	compact := "compact"
	spec.Partitions = 1
	spec.Configs = map[string]*string{"cleanup.policy": &compact}
	if _, err := EnsureTopics(ctx, cfg, spec, log, topic); err != nil {
		return nil, fmt.Errorf("kafka progress topic: %w", err)
	}
	cl, err := kgo.NewClient(append(cfg.opts(log),
		kgo.DefaultProduceTopic(topic),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond),
		// Publish's context bounds it even with records in flight to a
		// broker that went away (the Node's loop calls it): a report sent
		// twice is harmless, the latest per task wins.
		kgo.AllowIdempotentProduceCancellation(),
	)...)
	if err != nil {
		return nil, fmt.Errorf("kafka progress topic: %w", err)
	}
	p := &Progress{topic: topic, cl: cl, log: log, latest: make(map[int32]engine.TaskProgress)}
	go p.read()
	return p, nil
}

// read keeps the latest report of every task.
func (p *Progress) read() {
	for {
		fetches := p.cl.PollFetches(context.Background())
		if fetches.IsClientClosed() {
			return
		}
		fetches.EachRecord(func(r *kgo.Record) {
			task, err := strconv.ParseInt(string(r.Key), 10, 32)
			f := strings.Fields(string(r.Value))
			if err != nil || len(f) != 3 {
				return
			}
			wm, err1 := strconv.ParseInt(f[0], 10, 64)
			at, err2 := strconv.ParseInt(f[2], 10, 64)
			if err1 != nil || err2 != nil {
				return
			}
			p.mu.Lock()
			p.latest[int32(task)] = engine.TaskProgress{WatermarkNs: wm, Idle: f[1] == "idle", At: time.Unix(0, at)}
			p.mu.Unlock()
		})
	}
}

// Publish implements engine.Progress.
func (p *Progress) Publish(ctx context.Context, tasks map[int32]engine.TaskProgress) error {
	records := make([]*kgo.Record, 0, len(tasks))
	for task, tp := range tasks {
		state := "active"
		if tp.Idle {
			state = "idle"
		}
		records = append(records, &kgo.Record{Key: []byte(strconv.Itoa(int(task))),
			Value: fmt.Appendf(nil, "%d %s %d", tp.WatermarkNs, state, tp.At.UnixNano())})
	}
	return p.cl.ProduceSync(ctx, records...).FirstErr()
}

// Latest implements engine.Progress.
func (p *Progress) Latest() map[int32]engine.TaskProgress {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[int32]engine.TaskProgress, len(p.latest))
	for k, v := range p.latest {
		out[k] = v
	}
	return out
}

// Close stops reading.
func (p *Progress) Close() error {
	p.cl.Close()
	return nil
}
