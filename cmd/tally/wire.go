package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/connectors/clickhouse"
	"github.com/tally-billing/tally/connectors/jsonl"
	"github.com/tally-billing/tally/connectors/kafka"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// app is one wired Tally: store, engine, sinks and HTTP endpoints.
type app struct {
	cfg      Config
	engine   *engine.Engine
	registry *prometheus.Registry
	closers  []io.Closer // closed in reverse order
	listener net.Listener
	log      *slog.Logger
}

// planRater prices every customer with one plan (subscriptions come later).
type planRater struct{ plan *rating.Plan }

func (r planRater) Increment(_, meter string, _ time.Time, before, after decimal.Decimal) (rating.Charge, error) {
	return r.plan.Increment(meter, before, after)
}

// loadPlan reads and validates the plan file.
func loadPlan(path string) (*rating.Plan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config key plan (flag --plan): %w", err)
	}
	plan, err := rating.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("plan file %s: %w", path, err)
	}
	return plan, nil
}

// buildOptions adjust wiring; tests use them to wrap sinks.
type buildOptions struct {
	wrapSink func(engine.Sink) engine.Sink
}

type buildOption func(*buildOptions)

// compileMeters returns the configured meters, or one SUM meter per priced
// meter of the plan. Every meter must be priced: usage is never silently free.
func compileMeters(cfg Config, plan *rating.Plan) (*engine.Meters, error) {
	list := cfg.Meters
	if len(list) == 0 {
		for _, name := range plan.MeterNames() {
			list = append(list, engine.Meter{Name: name, Aggregation: engine.AggSum, GroupBy: []string{"*"}, Decimal: true})
		}
	}
	meters, err := engine.CompileMeters(list, cfg.Window)
	if err != nil {
		return nil, fmt.Errorf("config key %w", err)
	}
	for _, name := range meters.Names() {
		if !plan.Prices(name) {
			return nil, fmt.Errorf("config key meters: meter %s is not priced by plan %s; add it to the plan (a zero price is fine)", name, plan.ID)
		}
		price := plan.Meters[name]
		// Refuse what the engine would price wrongly rather than bill it.
		if !price.MinimumCommitment.IsZero() || !price.FlatFee.IsZero() {
			return nil, fmt.Errorf("plan %s: meters.%s: minimumCommitment and flatFee are period charges the engine does not emit yet; remove them (tally rate prices them offline)", plan.ID, name)
		}
		if !meters.Additive(name) && (price.Model != rating.PerUnit || !price.FreeAllowance.IsZero()) {
			return nil, fmt.Errorf("plan %s: meters.%s: model %s needs period-to-date totals, which only SUM and COUNT meters have; price this meter per_unit without an allowance", plan.ID, name, price.Model)
		}
	}
	return meters, nil
}

// build wires an app from cfg. On error everything opened is closed.
func build(ctx context.Context, cfg Config, log *slog.Logger, options ...buildOption) (a *app, err error) {
	var opts buildOptions
	for _, o := range options {
		o(&opts)
	}
	a = &app{cfg: cfg, registry: prometheus.NewRegistry(), log: log}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	plan, err := loadPlan(cfg.Plan)
	if err != nil {
		return nil, err
	}
	store, err := state.Open(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, store)

	source, err := kafka.NewSource(kafka.SourceConfig{Brokers: cfg.Kafka.Brokers, Topics: cfg.Kafka.Topics}, log)
	if err != nil {
		return nil, err
	}
	var sinks []engine.Sink
	var deadSinks []engine.DeadLetterSink
	if cfg.ClickHouse.Addr != "" {
		ch, err := clickhouse.Open(ctx, clickhouse.Config{Addr: cfg.ClickHouse.Addr, Database: cfg.ClickHouse.Database,
			Table: cfg.ClickHouse.Table, Username: cfg.ClickHouse.Username, Password: cfg.ClickHouse.Password})
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, ch)
		sinks = append(sinks, ch)
		deadSinks = append(deadSinks, ch.DeadLetters())
	}
	if cfg.Kafka.RatedTopic != "" {
		rated := kafka.NewRatedSink(kafka.WriterConfig{Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.RatedTopic, BatchRows: cfg.SinkBatchRows})
		a.closers = append(a.closers, rated)
		sinks = append(sinks, rated)
	}
	if cfg.OutputFile != "" {
		file, err := jsonl.Open(cfg.OutputFile)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, file)
		sinks = append(sinks, file)
	}
	dead := kafka.NewDeadLetterSink(kafka.WriterConfig{Brokers: cfg.Kafka.Brokers, Topic: cfg.Kafka.DeadLetterTopic})
	a.closers = append(a.closers, dead)
	deadSinks = append([]engine.DeadLetterSink{dead}, deadSinks...)

	if opts.wrapSink != nil {
		for i := range sinks {
			sinks[i] = opts.wrapSink(sinks[i])
		}
	}
	meters, err := compileMeters(cfg, plan)
	if err != nil {
		return nil, err
	}
	horizon, _ := cfg.horizon() // validated
	decoder := engine.NewDecoder(meters, engine.WithMaxFutureSkew(cfg.MaxFutureSkew), engine.WithHorizon(horizon))
	metrics := engine.NewMetrics(a.registry)
	a.engine, err = engine.New(cfg.engineConfig(), store, source, decoder,
		planRater{plan: plan}, sinks, deadSinks, metrics, log)
	if err != nil {
		return nil, err
	}
	if cfg.HTTPAddr != "" {
		a.listener, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("config key httpAddr (flag --http-addr): listen on %s: %w", cfg.HTTPAddr, err)
		}
	}
	return a, nil
}

// handler serves /metrics, /healthz, /readyz and the live query API.
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	registerAPI(mux, a.engine)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.engine.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// run serves HTTP and runs the engine until it stops. The first stop signal
// (stop closing) asks for a graceful shutdown; cancelling ctx stops at once.
func (a *app) run(ctx context.Context, stop <-chan struct{}) error {
	if a.listener != nil {
		srv := &http.Server{Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(a.listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("http server", "err", err)
			}
		}()
		defer srv.Close()
		a.log.Info("serving metrics", "addr", "http://"+a.listener.Addr().String()+"/metrics")
	}
	go func() {
		select {
		case <-stop:
			a.log.Info("shutting down: final checkpoint and sink drain")
			a.engine.Shutdown()
		case <-ctx.Done():
		}
	}()
	return a.engine.Run(ctx)
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i].Close(); err != nil {
			a.log.Warn("close", "err", err)
		}
	}
	a.closers = nil
}
