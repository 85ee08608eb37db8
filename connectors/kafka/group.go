package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// GroupConfig configures a Node's membership of its consumer group.
type GroupConfig struct {
	ClientConfig
	Group string
	// Topic is the usage topic whose partitions the group assigns: task p
	// is partition p of every usage topic (they are co-partitioned).
	Topic          string
	SessionTimeout time.Duration // default 10s: how soon a dead member's tasks move
	// InstanceID, when set, makes the member static (KIP-345): restarted
	// with the same id within the session timeout, it gets its tasks back
	// without a rebalance; stopped, it does not leave (its tasks move after
	// the session timeout).
	InstanceID string
}

// Group is a Node's membership: the cooperative-sticky balancer of Kafka's
// group protocol decides which member owns which task. It reads no records
// (the tasks read theirs from their checkpointed offsets); it only
// assigns. It implements engine.Membership.
type Group struct {
	cfg GroupConfig
	log *slog.Logger
	cl  *kgo.Client
}

// NewGroup returns a membership; Join joins.
func NewGroup(cfg GroupConfig, log *slog.Logger) *Group {
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	return &Group{cfg: cfg, log: log}
}

func tasksOf(m map[string][]int32, topic string) []int32 {
	out := slices.Clone(m[topic])
	slices.Sort(out)
	return out
}

// Join implements engine.Membership. The callbacks run on the group's
// goroutine, one at a time; a revocation or loss waits for them, so that a
// task stops before another member may take it.
func (g *Group) Join(ctx context.Context, assigned, revoked, lost func(tasks []int32)) error {
	opts := g.cfg.opts(g.log)
	if g.cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(g.cfg.InstanceID))
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.ConsumerGroup(g.cfg.Group),
		kgo.ConsumeTopics(g.cfg.Topic),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(g.cfg.SessionTimeout),
		// A member learns that the group rebalances (one joined or left)
		// from a heartbeat's answer: at Kafka's default 3 s, that wait was
		// most of a moved task's pause (bench/rebalance.sh). Two small
		// requests a second cost the coordinator nothing.
		kgo.HeartbeatInterval(500*time.Millisecond),
		// A revoked task takes one final checkpoint, without waiting for
		// its sinks (its next owner delivers its outbox): well within this.
		kgo.RebalanceTimeout(30*time.Second),
		kgo.FetchMaxBytes(1),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if ts := tasksOf(m, g.cfg.Topic); len(ts) > 0 {
				assigned(ts)
			}
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if ts := tasksOf(m, g.cfg.Topic); len(ts) > 0 {
				revoked(ts)
			}
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if ts := tasksOf(m, g.cfg.Topic); len(ts) > 0 {
				lost(ts)
			}
		}),
	)...)
	if err != nil {
		return fmt.Errorf("kafka group %s: %w", g.cfg.Group, err)
	}
	// The group assigns; the tasks read. Nothing is fetched here.
	cl.PauseFetchTopics(g.cfg.Topic)
	g.cl = cl
	// A client in a group joins once it polls.
	go func() {
		for {
			fetches := cl.PollFetches(ctx)
			if fetches.IsClientClosed() || ctx.Err() != nil {
				return
			}
		}
	}()
	return nil
}

// Leave implements engine.Membership: a dynamic member leaves at once (kgo
// sends the LeaveGroup when its client closes), so that its tasks move
// without waiting for the session timeout; a static member stays, its
// tasks reserved for its restart.
func (g *Group) Leave() {
	if g.cl != nil {
		// Bounded: with the coordinator out of reach (a broker outage) a
		// leave would wait for it; the member then expires after the
		// session timeout instead, which moves its tasks as well.
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		if err := g.cl.LeaveGroupContext(ctx); err != nil {
			g.log.Warn("leaving the group failed; the member expires after the session timeout", "group", g.cfg.Group, "err", err)
		}
		cancel()
		g.cl.Close()
	}
}

// leaveTimeout bounds how long Leave waits for the coordinator.
const leaveTimeout = 5 * time.Second
