package main

import (
	"cmp"
	"context"
	_ "embed"
	"encoding/json"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// The live console: GET / (the engine at a glance) and GET /customers/{id}
// (a customer's usage, charges, entitlements, SLA and statement), plain
// HTML pages whose script polls the JSON API: GET /v1/overview and the
// customer endpoints. Nothing to build: the pages are embedded.

//go:embed console.html
var consoleHTML string

//go:embed console_customer.html
var customerHTML string

var (
	consolePage  = template.Must(template.New("console").Parse(consoleHTML))
	customerPage = template.Must(template.New("customer").Parse(customerHTML))
)

// consoleTopCustomers is how many customers the console lists.
const consoleTopCustomers = 10

// recentActionsKept is how many provisioning actions the console keeps.
const recentActionsKept = 50

// recentActions is an ActionSink keeping the last actions delivered, for
// the console (actions leave once their checkpoint is durable, exactly as
// the provisioning topic gets them).
type recentActions struct {
	mu   sync.Mutex
	last []engine.ProvisioningAction
}

func (r *recentActions) Name() string { return "console" }

func (r *recentActions) WriteActions(_ context.Context, actions []engine.ProvisioningAction) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = append(r.last, actions...)
	if over := len(r.last) - recentActionsKept; over > 0 {
		r.last = slices.Clone(r.last[over:])
	}
	return nil
}

func (r *recentActions) list() []engine.ProvisioningAction {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.last)
	slices.Reverse(out) // newest first
	return out
}

// Overview is GET /v1/overview: what the console's main page shows.
type Overview struct {
	At            time.Time                   `json:"at"`
	Health        string                      `json:"health"`
	Warnings      []string                    `json:"warnings"`
	Consumed      uint64                      `json:"consumed"`
	Lag           int64                       `json:"lag"`
	Partitions    []PartitionLag              `json:"partitions"`
	Watermark     *time.Time                  `json:"watermark"`
	Checkpoint    uint64                      `json:"checkpoint"`
	Backpressure  bool                        `json:"backpressure"`
	Sinks         []SinkState                 `json:"sinks"`
	Revenue       map[string]decimal.Decimal  `json:"revenue"`
	TopCustomers  []engine.CustomerCharge     `json:"top_customers"`
	DeadLetters   map[string]uint64           `json:"dead_letters"`
	Actions       map[string]uint64           `json:"actions"`
	RecentActions []engine.ProvisioningAction `json:"recent_actions"`
	SLACredits    uint64                      `json:"sla_credit_rows"`
}

// PartitionLag is a source partition's lag.
type PartitionLag struct {
	Topic     string `json:"topic"`
	Partition string `json:"partition"`
	Lag       int64  `json:"lag"`
}

// SinkState is a sink's delivery.
type SinkState struct {
	Sink           string `json:"sink"`
	LagCheckpoints int64  `json:"lag_checkpoints"`
	Errors         uint64 `json:"errors"`
}

// overview gathers the Overview from the engine and the metrics.
func (a *app) overview(ctx context.Context) Overview {
	stats := a.engine.Stats()
	o := Overview{At: time.Now().UTC(), Health: "ready", Warnings: a.engine.Warnings(), Consumed: stats.Consumed, Lag: stats.Lag,
		Checkpoint: stats.CheckpointSeq, Revenue: stats.Revenue, DeadLetters: map[string]uint64{}, Actions: map[string]uint64{},
		SLACredits: stats.Credits, Partitions: []PartitionLag{}, Sinks: []SinkState{}, TopCustomers: []engine.CustomerCharge{},
		RecentActions: []engine.ProvisioningAction{}}
	if o.Warnings == nil {
		o.Warnings = []string{}
	}
	if err := a.engine.Ready(); err != nil {
		o.Health = "not ready: " + err.Error()
	}
	if !stats.Watermark.IsZero() {
		wm := stats.Watermark.UTC()
		o.Watermark = &wm
	}
	if o.Revenue == nil {
		o.Revenue = map[string]decimal.Decimal{}
	}
	if a.actions != nil {
		o.RecentActions = a.actions.list()
	}
	if top, err := a.engine.TopCustomers(ctx, consoleTopCustomers); err == nil && top != nil {
		o.TopCustomers = top
	}
	families, _ := a.registry.Gather()
	lags, sinks := map[[2]string]int64{}, map[string]*SinkState{}
	sink := func(name string) *SinkState {
		if sinks[name] == nil {
			sinks[name] = &SinkState{Sink: name}
		}
		return sinks[name]
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			switch f.GetName() {
			case "tally_consumer_lag_records":
				lags[[2]string{labels["topic"], labels["partition"]}] += int64(v)
			case "tally_dead_letters_total":
				o.DeadLetters[labels["reason"]] += uint64(v)
			case "tally_provisioning_actions_total":
				o.Actions[labels["action"]] += uint64(v)
			case "tally_sink_lag_checkpoints":
				sink(labels["sink"]).LagCheckpoints = max(sink(labels["sink"]).LagCheckpoints, int64(v))
			case "tally_sink_errors_total":
				sink(labels["sink"]).Errors += uint64(v)
			case "tally_backpressure":
				o.Backpressure = o.Backpressure || v == 1
			}
		}
	}
	maps.DeleteFunc(o.DeadLetters, func(_ string, n uint64) bool { return n == 0 }) // reasons never seen
	maps.DeleteFunc(o.Actions, func(_ string, n uint64) bool { return n == 0 })
	for k, lag := range lags {
		o.Partitions = append(o.Partitions, PartitionLag{Topic: k[0], Partition: k[1], Lag: lag})
	}
	slices.SortFunc(o.Partitions, func(a, b PartitionLag) int {
		x, _ := strconv.Atoi(a.Partition)
		y, _ := strconv.Atoi(b.Partition)
		return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(x, y))
	})
	for _, name := range slices.Sorted(maps.Keys(sinks)) {
		o.Sinks = append(o.Sinks, *sinks[name])
	}
	return o
}

// registerConsole adds the console's pages and /v1/overview.
func (a *app) registerConsole(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/overview", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
		defer cancel()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.overview(ctx))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = consolePage.Execute(w, map[string]string{"Tenant": a.cfg.Tenant})
	})
	mux.HandleFunc("GET /customers/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = customerPage.Execute(w, map[string]string{"Customer": r.PathValue("id"), "Tenant": a.cfg.Tenant})
	})
}
