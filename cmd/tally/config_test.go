package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFlagNames(t *testing.T) {
	for key, want := range map[string]string{
		"kafka.brokers":             "kafka-brokers",
		"kafka.deadLetterTopic":     "kafka-dead-letter-topic",
		"checkpointInterval":        "checkpoint-interval",
		"clickhouse.addr":           "clickhouse-addr",
		"maxUndeliveredCheckpoints": "max-undelivered-checkpoints",
		"httpAddr":                  "http-addr",
	} {
		if got := flagName(key); got != want {
			t.Errorf("flagName(%s) = %s, want %s", key, got, want)
		}
	}
}

func TestConfigFileAndFlags(t *testing.T) {
	path := writeFile(t, "tally.yaml", `
plan: plan.yaml
stateDir: /var/lib/tally
kafka:
  brokers: [k1:9092, k2:9092]
  topics: [usage-a, usage-b]
window: 5m
checkpointInterval: 2s
`)
	cfg, err := loadConfig("run", []string{"--config", path, "--window=1h", "--kafka-topics", "x,y,z"}, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Window != time.Hour {
		t.Errorf("window %s: the flag must override the file", cfg.Window)
	}
	if cfg.CheckpointInterval != 2*time.Second || cfg.StateDir != "/var/lib/tally" {
		t.Errorf("file values lost: %+v", cfg)
	}
	if strings.Join(cfg.Kafka.Brokers, ",") != "k1:9092,k2:9092" || strings.Join(cfg.Kafka.Topics, ",") != "x,y,z" {
		t.Errorf("brokers %v topics %v", cfg.Kafka.Brokers, cfg.Kafka.Topics)
	}
	if cfg.Kafka.DeadLetterTopic != "usage-dead-letters" || cfg.AllowedLateness != 5*time.Second {
		t.Errorf("defaults lost: %+v", cfg)
	}
}

func TestBadConfigNamesKeyAndFlag(t *testing.T) {
	plan := "--plan=p.yaml"
	brokers := "--kafka-brokers=k:9092"
	for _, tt := range []struct {
		name string
		file string
		args []string
		want []string
	}{
		{"missing brokers", "", []string{plan}, []string{"kafka.brokers", "--kafka-brokers"}},
		{"missing plan", "", []string{brokers}, []string{"config key plan", "--plan"}},
		{"broker without port", "", []string{plan, "--kafka-brokers=kafka"}, []string{"kafka.brokers", "no port"}},
		{"window not dividing a day", "", []string{plan, brokers, "--window=7m"}, []string{"config key window", "--window", "divide a day"}},
		{"horizon shorter than grace", "", []string{plan, brokers, "--grace=2h"}, []string{"reviseHorizon", "--revise-horizon"}},
		{"bad duration flag", "", []string{plan, brokers, "--window=soon"}, []string{"window", "soon"}},
		{"unknown flag", "", []string{plan, brokers, "--windwo=1m"}, []string{"windwo"}},
		{"unknown key in file", "plan: p.yaml\nwindwo: 1m\n", []string{brokers}, []string{"windwo"}},
		{"wrong type in file", "plan: p.yaml\nshards: many\n", []string{brokers}, []string{"many"}},
		{"stray argument", "", []string{plan, brokers, "extra"}, []string{"extra"}},
		{"bad time zone", "", []string{plan, brokers, "--timezone=Mars/Olympus"}, []string{"config key timezone", "--timezone", "Mars/Olympus"}},
		{"bad customer zone", "plan: p.yaml\ncustomers: [{id: c1, timezone: Nowhere}]\n", []string{brokers}, []string{"customers.c1.timezone", "Nowhere"}},
		{"bad anchor day", "", []string{plan, brokers, "--billing-anchor-day=31"}, []string{"billingAnchorDay", "1..28"}},
		{"bad memory limit", "", []string{plan, brokers, "--memory-limit=lots"}, []string{"config key memoryLimit", "--memory-limit", "lots"}},
		{"memory limit unit", "", []string{plan, brokers, "--memory-limit=12GiBs"}, []string{"memoryLimit", "unknown unit"}},
		{"gc percent", "", []string{plan, brokers, "--gc-percent=5"}, []string{"config key gcPercent", "--gc-percent", "25..10000"}},
		{"session timeout", "", []string{plan, brokers, "--kafka-session-timeout=1s"}, []string{"kafka.sessionTimeout", "6s..30m"}},
		{"webhook without secret", "plan: p.yaml\nwebhooks: [{url: 'https://p.example.com/t'}]\n", []string{brokers}, []string{"config key webhooks[0].secret", "missing"}},
		{"webhook url", "plan: p.yaml\nwebhooks: [{url: 'p.example.com', secret: s}]\n", []string{brokers}, []string{"webhooks[0].url", "not an http(s) URL"}},
		{"webhook twice", "plan: p.yaml\nwebhooks: [{url: 'https://p.example.com/t', secret: s}, {url: 'https://p.example.com/t', secret: t}]\n", []string{brokers}, []string{"webhooks[1].url", "listed twice"}},
		{"provisioning topic", "", []string{plan, brokers, "--kafka-provisioning-topic=usage"}, []string{"kafka.provisioningTopic", "own topic"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append([]string{"--config", writeFile(t, "c.yaml", tt.file)}, args...)
			}
			_, err := loadConfig("run", args, true)
			if err == nil {
				t.Fatalf("loadConfig(%v) accepted a bad configuration", args)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestMetersFromFileMustBePriced(t *testing.T) {
	path := writeFile(t, "tally.yaml", `
plan: demo_plan.yaml
kafka: {brokers: ["k:9092"]}
meters:
  - {name: sms, aggregation: COUNT, groupBy: [destination]}
  - {name: roaming_days, eventTypes: [sms], aggregation: UNIQUE_COUNT, valuePath: dims.country}
`)
	cfg, err := loadConfig("run", []string{"--config", path}, true)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := loadPricing(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := compileMeters(cfg, plan); err == nil || !strings.Contains(err.Error(), "roaming_days is not priced") {
		t.Errorf("compileMeters with an unpriced meter: %v", err)
	}
	cfg.Meters = cfg.Meters[:1]
	meters, err := compileMeters(cfg, plan)
	if err != nil || strings.Join(meters.Names(), ",") != "sms" {
		t.Errorf("compileMeters = %v, %v", meters, err)
	}
	cfg.Meters[0].Aggregation = "MEDIAN"
	if _, err := compileMeters(cfg, plan); err == nil || !strings.Contains(err.Error(), "meters.sms.aggregation") {
		t.Errorf("compileMeters with a bad aggregation: %v", err)
	}
}

// TestEntitlementsMustFitTheMeters: an entitlement on a meter the engine
// does not count, or a money limit on a meter whose windows do not add up,
// fails at start naming the plan and field.
func TestEntitlementsMustFitTheMeters(t *testing.T) {
	plan := writeFile(t, "plan.yaml", `
id: capped
currency: EUR
meters:
  sms: {model: per_unit, unitPrice: "0.05"}
  peak_mbps: {model: per_unit, unitPrice: "1", entitlement: {limit: "100", of: amount}}
  fax: {model: per_unit, unitPrice: "0.5", entitlement: {limit: "10"}}
  latest_gb: {model: per_unit, unitPrice: "0", entitlement: {of: grants}}
`)
	for _, c := range []struct {
		meters string
		want   string
	}{
		{"[{name: sms}, {name: peak_mbps, aggregation: MAX}, {name: latest_gb}]", "plan capped: meters.fax.entitlement: meter fax is not configured"},
		{"[{name: sms}, {name: peak_mbps, aggregation: MAX}, {name: fax}, {name: latest_gb}]", "plan capped: meters.peak_mbps.entitlement.of: amount needs a SUM or COUNT meter"},
		{"[{name: sms}, {name: peak_mbps}, {name: fax}, {name: latest_gb, aggregation: LATEST}]", "plan capped: meters.latest_gb.entitlement.of: grants needs a SUM or COUNT meter"},
	} {
		path := writeFile(t, "tally.yaml", "plan: "+plan+"\nkafka: {brokers: [\"k:9092\"]}\nmeters: "+c.meters+"\n")
		cfg, err := loadConfig("run", []string{"--config", path}, true)
		if err != nil {
			t.Fatal(err)
		}
		prices, err := loadPricing(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := compileMeters(cfg, prices); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("meters %s: %v, want an error with %q", c.meters, err, c.want)
		}
	}
}

// TestDefaultPlanCanBeTurnedOff: a one-plan file makes its plan everyone's
// default unless defaultPlan is set, and `defaultPlan: ""` (or the empty
// flag) turns that off, so usage without a subscription is dead-lettered.
func TestDefaultPlanCanBeTurnedOff(t *testing.T) {
	plan := writeFile(t, "plan.yaml", `
id: only
currency: EUR
meters: {sms: {model: per_unit, unitPrice: "0.10"}}
`)
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		file   string
		flags  []string
		priced bool
	}{
		{name: "unset", file: "", priced: true},
		{name: "empty in the file", file: `defaultPlan: ""`, priced: false},
		{name: "empty flag", file: "", flags: []string{"--default-plan="}, priced: false},
		{name: "named", file: `defaultPlan: only`, priced: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, "tally.yaml", "plan: "+plan+"\nkafka: {brokers: [\"k:9092\"]}\n"+tc.file+"\n")
			cfg, err := loadConfig("run", append([]string{"--config", path}, tc.flags...), true)
			if err != nil {
				t.Fatal(err)
			}
			pricing, err := loadPricing(cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = pricing.Increment(rating.Subscriber{ID: "nobody"}, "sms", at, decimal.Zero, decimal.NewFromInt(1))
			if priced := err == nil; priced != tc.priced {
				t.Errorf("usage of a customer without a subscription priced = %v (%v), want %v", priced, err, tc.priced)
			}
		})
	}
}
