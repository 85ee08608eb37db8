package main

import (
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tally-billing/tally/connectors/webhook"
	"github.com/tally-billing/tally/engine"
)

// checkConfig is `tally run --check-config`: what `tally run` checks
// before it opens state or reaches Kafka or ClickHouse (the configuration
// with its flags, the plans, the meters they price, the subscriptions,
// customers and webhooks), so that the files a deployment mounts are
// checked before a rollout. It says what it read on out.
func checkConfig(cfg Config, out io.Writer, log *slog.Logger) error {
	prices, meters, err := loadPlans(cfg)
	if err != nil {
		return err
	}
	for _, w := range cfg.Webhooks {
		if _, err := webhook.New(w); err != nil {
			return fmt.Errorf("config key webhooks: %w", err)
		}
	}
	decoder := engine.NewDecoder(meters, cfg.decoderOptions()...)
	// The engine checks the rest (customers' zones, the subscriptions'
	// currencies) when built; it reads nothing until run.
	if _, err := engine.New(cfg.engineConfig(), nil, nil, decoder, prices, nil, []engine.DeadLetterSink{deadCollector{}},
		engine.NewMetrics(prometheus.NewRegistry()), log); err != nil {
		return engineError(err)
	}
	layout := cfg.ScaleOut
	if layout == "" {
		layout = "unset (chosen at start from the state folder)"
	}
	sinks := []string{}
	if cfg.ClickHouse.Addr != "" {
		sinks = append(sinks, "clickhouse "+cfg.ClickHouse.Addr)
	}
	if cfg.Kafka.RatedTopic != "" {
		sinks = append(sinks, "kafka topic "+cfg.Kafka.RatedTopic)
	}
	fmt.Fprintf(out, "config OK: plans %s; meters %s; scaleOut %s; kafka %s, topics %s; sinks: %s\n",
		strings.Join(prices.Catalog().IDs(), ", "), strings.Join(slices.Sorted(slices.Values(meters.Names())), ", "), layout,
		strings.Join(cfg.Kafka.Brokers, ", "), strings.Join(cfg.Kafka.Topics, ", "), strings.Join(sinks, ", "))
	return nil
}
