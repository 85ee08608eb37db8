package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tally-billing/tally/connectors/clickhouse"
	"github.com/tally-billing/tally/connectors/jsonl"
	"github.com/tally-billing/tally/connectors/kafka"
	"github.com/tally-billing/tally/connectors/webhook"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// app is one wired Tally: store, engine, sinks and HTTP endpoints.
type app struct {
	cfg      Config
	engine   runner
	registry *prometheus.Registry
	closers  []io.Closer // closed in reverse order
	listener net.Listener
	log      *slog.Logger
	// actions keeps the last provisioning actions for the console; nil
	// without an action sink (the engine then announces none).
	actions *recentActions
	// background runs beside the engine (the re-keying stage); an error
	// stops the engine at once.
	background []func(ctx context.Context) error
}

// loadPricing reads the plan file (one plan, or a list of plans and
// versions) and checks the subscriptions and default plan against it.
func loadPricing(cfg Config) (*rating.Pricing, error) {
	data, err := os.ReadFile(cfg.Plan)
	if err != nil {
		return nil, fmt.Errorf("config key plan (flag --plan): %w", err)
	}
	catalog, err := rating.ParseCatalog(data)
	if err != nil {
		return nil, fmt.Errorf("plan file %s: %w", cfg.Plan, err)
	}
	subs, err := rating.NewSubscriptions(cfg.Subscriptions, catalog)
	if err != nil {
		return nil, fmt.Errorf("config key %w", err)
	}
	defaultPlan := cfg.DefaultPlan.Value
	if ids := catalog.IDs(); !cfg.DefaultPlan.IsSet && len(ids) == 1 {
		defaultPlan = ids[0] // unset: a single plan prices everyone
	}
	if defaultPlan != "" && !slices.Contains(catalog.IDs(), defaultPlan) {
		return nil, fmt.Errorf("config key defaultPlan (flag --default-plan): no plan %q; plans are %v", defaultPlan, catalog.IDs())
	}
	return rating.NewPricing(catalog, subs, defaultPlan), nil
}

// loadPlans is loadPricing and the meters it prices (compileMeters).
func loadPlans(cfg Config) (*rating.Pricing, *engine.Meters, error) {
	prices, err := loadPricing(cfg)
	if err != nil {
		return nil, nil, err
	}
	meters, err := compileMeters(cfg, prices)
	if err != nil {
		return nil, nil, err
	}
	return prices, meters, nil
}

// buildOptions adjust wiring; tests use them to wrap sinks.
type buildOptions struct {
	wrapSink func(engine.Sink) engine.Sink
}

type buildOption func(*buildOptions)

// compileMeters returns the configured meters, or one SUM meter per meter
// any plan prices. Every meter must be priced by some plan, and pricing the
// engine cannot apply yet is refused: usage is never silently mispriced.
func compileMeters(cfg Config, p *rating.Pricing) (*engine.Meters, error) {
	priced := make(map[string]bool)
	for _, v := range p.Catalog().Versions() {
		for _, name := range v.MeterNames() {
			priced[name] = true
		}
	}
	list := cfg.Meters
	if len(list) == 0 {
		for _, name := range slices.Sorted(maps.Keys(priced)) {
			list = append(list, engine.Meter{Name: name, Aggregation: engine.AggSum, GroupBy: []string{"*"}, Decimal: true})
		}
	}
	meters, err := engine.CompileMeters(list, cfg.Window)
	if err != nil {
		return nil, fmt.Errorf("config key %w", err)
	}
	for _, name := range meters.Names() {
		if !priced[name] {
			return nil, fmt.Errorf("config key meters: meter %s is not priced by any plan (%v); add it to a plan (a zero price is fine)", name, p.Catalog().IDs())
		}
	}
	for _, v := range p.Catalog().Versions() {
		for _, name := range v.MeterNames() {
			price := v.Meters[name]
			if !meters.Has(name) {
				if price.Entitlement != nil {
					return nil, fmt.Errorf("plan %s: meters.%s.entitlement: meter %s is not configured (config key meters), so its usage is never counted; configure the meter or drop the entitlement", v.ID, name, name)
				}
				continue
			}
			if e := price.Entitlement; e != nil && e.Of == rating.LimitAmount && !meters.Additive(name) {
				return nil, fmt.Errorf("plan %s: meters.%s.entitlement.of: amount needs a SUM or COUNT meter, whose windows add up to the period's charge; limit units instead", v.ID, name)
			}
			if e := price.Entitlement; e != nil && e.Of.Grants() && !meters.Additive(name) {
				return nil, fmt.Errorf("plan %s: meters.%s.entitlement.of: %s needs a SUM or COUNT meter, whose usage draws grants down; meter %s aggregates otherwise", v.ID, name, e.Of, name)
			}
			if !meters.Additive(name) && (price.Model != rating.PerUnit || !price.FreeAllowance.IsZero() || price.PerEvent()) {
				return nil, fmt.Errorf("plan %s: meters.%s: model %s needs period-to-date totals or per-event charges, which only SUM and COUNT meters have; price this meter per_unit without an allowance or per-event fields", v.ID, name, price.Model)
			}
			if price.RateKeyed() && slices.Contains(meters.GroupBy(name), engine.RateDim) {
				return nil, fmt.Errorf("config key meters: meter %s groups by %q, which plan %s's bands or destinations fill with the rate; rename that dimension", name, engine.RateDim, v.ID)
			}
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
	opened := a // a is nil after an error return
	defer func() {
		if err != nil {
			opened.close()
		}
	}()
	a.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	prices, err := loadPricing(cfg)
	if err != nil {
		return nil, err
	}
	crash, err := parseFaults(os.Getenv(faultsEnv))
	if err != nil {
		return nil, err
	}
	if crash != nil {
		log.Warn("crash injection armed: this process kills itself at random", "env", faultsEnv)
	}
	layout, why, err := resolveScaleOut(cfg)
	if err != nil {
		return nil, err
	}
	if why != "" {
		log.Warn("scaleOut unset: running "+layout, "why", why)
	}
	cfg.ScaleOut, a.cfg.ScaleOut = layout, layout
	var store *state.Store
	var node *state.Store // scaleOut local or group: the Node's own store
	var name string       // its name (nodeName)
	if cfg.ScaleOut == scaleOutOff {
		if _, err := os.Stat(filepath.Join(cfg.StateDir, "tasks")); err == nil {
			return nil, fmt.Errorf("config key scaleOut: state folder %s holds partition-owned tasks (scaleOut local or group); run with scaleOut: group, or give another stateDir", cfg.StateDir)
		}
		if store, err = state.Open(cfg.StateDir); err != nil {
			return nil, err
		}
		a.closers = append(a.closers, store)
	} else {
		// Opened first and closed last (closers run backwards): its lock
		// is held from before any client uses the node's name (the
		// repartition stage's transactional id) or kafka.instanceId until
		// after every one of them closed.
		if node, err = engine.OpenNodeState(cfg.StateDir); err != nil {
			return nil, engineError(err)
		}
		a.closers = append(a.closers, node)
		if name, err = cfg.nodeName(node); err != nil {
			return nil, err
		}
	}

	if err := ensureOutputTopics(ctx, cfg, log); err != nil {
		return nil, err
	}
	source, err := kafka.NewSource(cfg.kafkaSource(), log)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, source)
	var sinks []engine.Sink
	var deadSinks []engine.DeadLetterSink
	if cfg.ClickHouse.Addr != "" {
		ch, err := clickhouse.Open(ctx, clickhouse.Config{Addr: cfg.ClickHouse.Addr, Database: cfg.ClickHouse.Database,
			Table: cfg.ClickHouse.Table, Username: cfg.ClickHouse.Username, Password: cfg.ClickHouse.Password})
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, ch)
		sinks = append(sinks, faultySink{Sink: ch, faults: crash, point: "clickhouse"})
		deadSinks = append(deadSinks, ch.DeadLetters())
	}
	if cfg.Kafka.RatedTopic != "" {
		rated, err := kafka.NewRatedSink(kafka.WriterConfig{ClientConfig: cfg.kafkaClient(), Topic: cfg.Kafka.RatedTopic}, log)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, rated)
		sinks = append(sinks, faultySink{Sink: rated, faults: crash, point: "kafka"})
	}
	if cfg.OutputFile != "" {
		file, err := jsonl.Open(cfg.OutputFile)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, file)
		sinks = append(sinks, file)
	}
	dead, err := kafka.NewDeadLetterSink(kafka.WriterConfig{ClientConfig: cfg.kafkaClient(), Topic: cfg.Kafka.DeadLetterTopic}, log)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, dead)
	deadSinks = append([]engine.DeadLetterSink{dead}, deadSinks...)

	if opts.wrapSink != nil {
		for i := range sinks {
			sinks[i] = opts.wrapSink(sinks[i])
		}
	}
	meters, err := compileMeters(cfg, prices)
	if err != nil {
		return nil, err
	}
	decoder := engine.NewDecoder(meters, cfg.decoderOptions()...)
	ecfg := cfg.engineConfig()
	if crash != nil {
		ecfg.FaultHook = crash.at
	}
	if cfg.Kafka.ProvisioningTopic != "" {
		actions, err := kafka.NewActionSink(kafka.WriterConfig{ClientConfig: cfg.kafkaClient(), Topic: cfg.Kafka.ProvisioningTopic}, log)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, actions)
		ecfg.ActionSinks = []engine.ActionSink{faultyActionSink{ActionSink: actions, faults: crash}}
	}
	for _, w := range cfg.Webhooks {
		hook, err := webhook.New(w)
		if err != nil {
			return nil, fmt.Errorf("config key webhooks: %w", err)
		}
		ecfg.ActionSinks = append(ecfg.ActionSinks, faultyActionSink{ActionSink: hook, faults: crash})
	}
	if len(ecfg.ActionSinks) > 0 { // the console shows the last ones
		a.actions = &recentActions{}
		ecfg.ActionSinks = append(ecfg.ActionSinks, a.actions)
	}
	if cfg.Kafka.Repartition {
		if source, err = a.repartition(ctx, cfg, decoder, source, name); err != nil {
			return nil, err
		}
		// Tally keys the repartition topic itself, with Kafka's murmur2.
		ecfg.Partitioner = engine.PartitionerMurmur2
	}
	if cfg.ScaleOut == scaleOutLocal || cfg.ScaleOut == scaleOutGroup {
		var changelogs *kafka.Changelogs
		changelogs, err = kafka.NewChangelogs(kafka.ChangelogConfig{ClientConfig: cfg.kafkaClient(), Topic: cfg.changelogTopic(),
			TransactionalID: "tally-" + cfg.Tenant, Spec: kafka.TopicSpec{ReplicationFactor: int16(cfg.Kafka.TopicReplication)}}, log)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, changelogs)
		ncfg := engine.NodeConfig{Engine: ecfg, StateDir: cfg.StateDir, Meta: node, Changelogs: changelogs}
		if cfg.ScaleOut == scaleOutGroup {
			// The group assigns the partitions of the tasks' first source
			// topic by name (the Node's lead topic; the repartition topic
			// with kafka.repartition): task p is partition p of every
			// source topic.
			topic := slices.Min(cfg.Kafka.Topics)
			if cfg.Kafka.Repartition {
				topic = cfg.repartitionTopic()
			}
			log.Info("group member", "group", cfg.group(), "topic", topic, "instanceId", cfg.Kafka.InstanceID)
			ncfg.Membership = kafka.NewGroup(kafka.GroupConfig{ClientConfig: cfg.kafkaClient(), Group: cfg.group(),
				Topic: topic, InstanceID: cfg.Kafka.InstanceID, SessionTimeout: cfg.Kafka.SessionTimeout}, log)
			progress, err := kafka.NewProgress(ctx, cfg.kafkaClient(), cfg.group()+"-progress",
				kafka.TopicSpec{ReplicationFactor: int16(cfg.Kafka.TopicReplication)}, log)
			if err != nil {
				return nil, err
			}
			a.closers = append(a.closers, progress)
			ncfg.Progress = progress
		}
		a.engine, err = engine.NewNode(ncfg, source, decoder, prices, sinks, deadSinks, a.registry, log)
	} else {
		a.engine, err = engine.New(ecfg, store, source, decoder,
			prices, sinks, deadSinks, engine.NewMetrics(a.registry), log)
	}
	if err != nil {
		return nil, engineError(err)
	}
	if cfg.HTTPAddr != "" {
		a.listener, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("config key httpAddr (flag --http-addr): listen on %s: %w", cfg.HTTPAddr, err)
		}
	}
	return a, nil
}

// repartition sets up kafka.repartition: the stage that re-keys the usage
// topics by customer into the repartition topic, run beside the engine,
// and the source of the tasks, that topic. node is the node's name
// (nodeName), unique among live processes: the stage's transactional id.
func (a *app) repartition(ctx context.Context, cfg Config, decoder *engine.Decoder, usage *kafka.Source, node string) (*kafka.Source, error) {
	partitions := cfg.Kafka.RepartitionPartitions
	if partitions == 0 {
		ids, err := usage.Partitions(ctx)
		if err != nil {
			return nil, err
		}
		for _, n := range engine.PartitionCounts(ids) {
			partitions = max(partitions, int(n))
		}
	}
	var scratch []engine.Event
	rp, err := kafka.NewRepartitioner(ctx, kafka.RepartitionConfig{ClientConfig: cfg.kafkaClient(), Group: cfg.group() + "-repartition",
		Inputs: cfg.Kafka.Topics, Topic: cfg.repartitionTopic(), TransactionalID: "tally-" + cfg.Tenant + "-repartition-" + node,
		InstanceID: cfg.Kafka.InstanceID, SessionTimeout: cfg.Kafka.SessionTimeout,
		Customer: func(value []byte) (string, bool, bool) {
			var err error
			scratch, err = decoder.DecodeAt(value, scratch[:0], time.Time{})
			if err != nil || len(scratch) == 0 {
				return "", false, false
			}
			if scratch[0].SLA != nil && scratch[0].SLA.Service != "" {
				return "", true, true // a shared service's: every task measures it
			}
			return scratch[0].Customer, false, true
		},
		Spec: kafka.TopicSpec{Partitions: int32(partitions), ReplicationFactor: int16(cfg.Kafka.TopicReplication)}}, a.log)
	if err != nil {
		return nil, err
	}
	// A closer too: its client joins the stage's group when created, and
	// a build that fails later must not leave it joined.
	a.closers = append(a.closers, rp)
	a.background = append(a.background, rp.Run)
	src := cfg.kafkaSource()
	src.Topics = []string{cfg.repartitionTopic()}
	src.Repartitioned = true
	source, err := kafka.NewSource(src, a.log)
	if err != nil {
		return nil, err
	}
	a.closers = append(a.closers, source)
	return source, nil
}

// runner is what the app needs of an engine: one (scaleOut: off) or a
// Node of partition-owned tasks (scaleOut: local or group).
type runner interface {
	Run(ctx context.Context) error
	Shutdown()
	Stats() engine.Stats
	Ready() error
	Warnings() []string
	TopCustomers(ctx context.Context, n int) ([]engine.CustomerCharge, error)
	usageQuerier
}

// ensureOutputTopics creates the output topics that do not exist, or fails
// naming the key.
func ensureOutputTopics(ctx context.Context, cfg Config, log *slog.Logger) error {
	keys := map[string]string{cfg.Kafka.DeadLetterTopic: "kafka.deadLetterTopic"}
	topics := []string{cfg.Kafka.DeadLetterTopic}
	if cfg.Kafka.ProvisioningTopic != "" {
		keys[cfg.Kafka.ProvisioningTopic] = "kafka.provisioningTopic"
		topics = append(topics, cfg.Kafka.ProvisioningTopic)
	}
	if cfg.Kafka.RatedTopic != "" {
		keys[cfg.Kafka.RatedTopic] = "kafka.ratedTopic"
		topics = append(topics, cfg.Kafka.RatedTopic)
	}
	spec := kafka.TopicSpec{Partitions: int32(cfg.Kafka.TopicPartitions), ReplicationFactor: int16(cfg.Kafka.TopicReplication)}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	created, err := kafka.EnsureTopics(ctx, cfg.kafkaClient(), spec, log, topics...)
	for _, t := range created {
		log.Info("created output topic", "topic", t, "partitions", spec.Partitions, "replication", spec.ReplicationFactor)
	}
	var te *kafka.TopicError
	if errors.As(err, &te) {
		return fmt.Errorf("config key %s (flag --%s): %w; create it, or let Tally create it (CreateTopics right; kafka.topicPartitions, kafka.topicReplication)",
			keys[te.Topic], flagName(keys[te.Topic]), err)
	}
	return err
}

// handler serves /metrics, /healthz, /readyz and the live query API.
func (a *app) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	registerAPI(mux, a.engine)
	a.registerConsole(mux)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		warnings := a.engine.Warnings()
		if err := a.engine.Ready(); err != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+err.Error())
		} else {
			fmt.Fprintln(w, "ready")
		}
		for _, warning := range warnings {
			fmt.Fprintln(w, "warning: "+warning)
		}
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
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	bgCtx, stopBackground := context.WithCancel(runCtx)
	var bg sync.WaitGroup
	for _, run := range a.background {
		bg.Go(func() {
			if err := run(bgCtx); err != nil {
				a.log.Error("stopping", "err", err)
				cancel(err)
			}
		})
	}
	err := a.engine.Run(runCtx)
	stopBackground()
	bg.Wait()
	if cause := context.Cause(runCtx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		if err := a.closers[i].Close(); err != nil {
			a.log.Warn("close", "err", err)
		}
	}
	a.closers = nil
}
