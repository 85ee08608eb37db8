package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TopicSpec is how a missing topic is created.
type TopicSpec struct {
	// Partitions and ReplicationFactor of a created topic; -1 takes the
	// broker's default (num.partitions, default.replication.factor).
	Partitions        int32
	ReplicationFactor int16
	// Configs are topic settings of a created topic (cleanup.policy).
	Configs map[string]*string
}

// EnsureTopics creates those of topics that do not exist and returns the
// ones it created. A topic that cannot be created (no CreateTopics right, a
// replication factor above the brokers' count) is an error naming it.
func EnsureTopics(ctx context.Context, cfg ClientConfig, spec TopicSpec, log *slog.Logger, topics ...string) (created []string, err error) {
	cl, err := kgo.NewClient(cfg.opts(log)...)
	if err != nil {
		return nil, fmt.Errorf("kafka admin: %w", err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	details, err := adm.ListTopics(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("kafka admin: list topics %v on %v: %w", topics, cfg.Brokers, err)
	}
	var missing []string
	for _, t := range topics {
		if d, ok := details[t]; !ok || errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			missing = append(missing, t)
		} else if d.Err != nil {
			return nil, fmt.Errorf("kafka admin: topic %q: %w", t, d.Err)
		}
	}
	if len(missing) == 0 {
		return nil, nil
	}
	resps, err := adm.CreateTopics(ctx, spec.Partitions, spec.ReplicationFactor, spec.Configs, missing...)
	if err != nil {
		return nil, fmt.Errorf("kafka admin: create topics %v: %w", missing, err)
	}
	for _, t := range missing {
		r := resps[t]
		switch {
		case r.Err == nil:
			created = append(created, t)
		case errors.Is(r.Err, kerr.TopicAlreadyExists):
			// Another instance created it meanwhile.
		default:
			msg := r.Err.Error()
			if r.ErrMessage != "" {
				msg += ": " + r.ErrMessage
			}
			return created, &TopicError{Topic: t, Problem: msg}
		}
	}
	return created, nil
}

// TopicError says which topic could not be created and why.
type TopicError struct {
	Topic   string
	Problem string
}

func (e *TopicError) Error() string {
	return fmt.Sprintf("topic %q does not exist and could not be created (%s)", e.Topic, e.Problem)
}
