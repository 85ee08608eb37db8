// Package kafka connects Tally to Kafka with franz-go's kgo: a source that
// reads usage topics partition by partition from offsets the engine gives it
// (the engine's checkpoint, never a consumer group's commits), writers for
// the rated-usage and dead-letter topics, and the admin steps a start needs
// (output topics, topic identities).
package kafka

import (
	"context"
	"log/slog"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ClientConfig is what every Kafka client of Tally shares.
type ClientConfig struct {
	Brokers []string
	// DialTimeout bounds connecting to a broker. Default 10s.
	DialTimeout time.Duration
	// MetadataMaxAge is how often topic metadata is refreshed: it bounds
	// how long a partition added to a topic goes unnoticed. Default 30s.
	MetadataMaxAge time.Duration
}

func (c ClientConfig) opts(log *slog.Logger) []kgo.Opt {
	dial := c.DialTimeout
	if dial == 0 {
		dial = 10 * time.Second
	}
	age := c.MetadataMaxAge
	if age == 0 {
		age = 30 * time.Second
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID("tally"),
		kgo.DialTimeout(dial),
		kgo.MetadataMaxAge(age),
		// The minimum age bounds how often a client asks for metadata again
		// when it wants it sooner (an unknown partition, a moved leader).
		kgo.MetadataMinAge(min(age, time.Second)),
	}
	if log != nil {
		opts = append(opts, kgo.WithLogger(slogAdapter{log}))
	}
	return opts
}

// slogAdapter passes kgo's warnings and errors to the process log: a broker
// that cannot be reached is said there, while kgo retries it.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (a slogAdapter) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	l := slog.LevelWarn
	if level == kgo.LogLevelError {
		l = slog.LevelError
	}
	a.log.Log(context.Background(), l, "kafka: "+msg, keyvals...)
}
