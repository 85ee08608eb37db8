package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/tally-billing/tally/connectors/kafka"
	"github.com/tally-billing/tally/connectors/webhook"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
	"gopkg.in/yaml.v3"
)

// Config is the whole configuration of `tally run`: a YAML file (--config)
// whose every key is also a flag (key kafka.brokers is --kafka-brokers);
// flags override the file. README documents each key.
type Config struct {
	// The engine's settings are keys of their own (tenant, window, ...).
	engine.Config `yaml:",inline"`

	StateDir string `yaml:"stateDir"`
	Plan     string `yaml:"plan"`
	HTTPAddr string `yaml:"httpAddr"`
	// OutputFile, when set, also writes rated rows as JSON lines.
	OutputFile string `yaml:"outputFile"`

	Kafka struct {
		Brokers         []string `yaml:"brokers"`
		Topics          []string `yaml:"topics"`
		RatedTopic      string   `yaml:"ratedTopic"`
		DeadLetterTopic string   `yaml:"deadLetterTopic"`
		// ProvisioningTopic receives provisioning actions (entitlement
		// thresholds crossed); empty: none are announced.
		ProvisioningTopic string `yaml:"provisioningTopic"`
		// Isolation is read_committed (default: records of aborted
		// transactions never count) or read_uncommitted.
		Isolation        string        `yaml:"isolation"`
		Partitioner      string        `yaml:"partitioner"`
		MetadataInterval time.Duration `yaml:"metadataInterval"`
		// ChangelogTopic holds the tasks' state with scaleOut: local
		// (default tally-<tenant>-changelog).
		ChangelogTopic string `yaml:"changelogTopic"`
		// Group is the consumer group of scaleOut: group (default
		// tally-<tenant>).
		Group string `yaml:"group"`
		// Repartition re-keys usage by customer through an internal topic
		// (scaleOut local or group), for producers that cannot key by it.
		Repartition           bool `yaml:"repartition"`
		RepartitionPartitions int  `yaml:"repartitionPartitions"`
		// InstanceID makes the member static (a restart keeps its tasks).
		InstanceID string `yaml:"instanceId"`
		// SessionTimeout is how long the group waits for a member that
		// stopped answering before its tasks move.
		SessionTimeout time.Duration `yaml:"sessionTimeout"`
		// Output topics that do not exist are created with these.
		TopicPartitions  int `yaml:"topicPartitions"`
		TopicReplication int `yaml:"topicReplication"`
	} `yaml:"kafka"`
	ClickHouse struct {
		Addr     string `yaml:"addr"`
		Database string `yaml:"database"`
		Table    string `yaml:"table"`
		Username string `yaml:"username"`
		Password string `yaml:"password"`
	} `yaml:"clickhouse"`

	// Meters configures what is measured; file only (a list). Without it,
	// every meter of the plan is a SUM of decimal values grouped by every
	// dimension.
	Meters []engine.Meter `yaml:"meters"`

	MaxFutureSkew time.Duration `yaml:"maxFutureSkew"`
	Horizon       string        `yaml:"horizon"`
	// Subscriptions assign customers to plans over time; file only.
	Subscriptions []rating.Subscription `yaml:"subscriptions"`
	// Webhooks receive provisioning actions (entitlement thresholds
	// crossed) by HTTP POST, signed; file only.
	Webhooks []webhook.Config `yaml:"webhooks"`
	// CSV reads records that are not JSON objects as CSV CDR lines
	// (engine/csv.go); file only.
	CSV *engine.CSVFormat `yaml:"csv"`
	// DefaultPlan prices customers without a subscription; without it they
	// are dead-lettered (no_subscription). Unset, a single-plan file's plan
	// is the default; set to "" there is none.
	DefaultPlan optionalString `yaml:"defaultPlan"`
	// GCPercent and MemoryLimit are the process's memory policy
	// (memory.go): the collector's GOGC and the soft memory limit (auto,
	// off or a size).
	GCPercent   int    `yaml:"gcPercent"`
	MemoryLimit string `yaml:"memoryLimit"`
	// ScaleOut is off (one engine for every partition), local (one task
	// per partition, each with its own state, docs/scale-out.md) or group
	// (the same, tasks shared by the instances of kafka.group). Unset, it
	// is group, unless the state folder holds off's layout or
	// kafka.partitioner is none (resolveScaleOut).
	ScaleOut string `yaml:"scaleOut"`
}

// ScaleOut values.
const (
	scaleOutOff   = "off"
	scaleOutLocal = "local"
	scaleOutGroup = "group"
)

func defaultConfig() Config {
	c := Config{Config: engine.DefaultConfig()}
	c.StateDir = "tally-state"
	c.HTTPAddr = "127.0.0.1:9464"
	c.Kafka.Topics = []string{"usage"}
	c.Kafka.RatedTopic = "rated-usage"
	c.Kafka.DeadLetterTopic = "usage-dead-letters"
	c.Kafka.Isolation = "read_committed"
	c.Kafka.Partitioner = string(c.Partitioner)
	c.Kafka.MetadataInterval = c.PartitionDiscovery
	c.Kafka.TopicPartitions = -1
	c.Kafka.SessionTimeout = 10 * time.Second
	c.GCPercent = defaultGCPercent
	c.MemoryLimit = "auto"
	c.Kafka.TopicReplication = -1
	c.ClickHouse.Database = "tally"
	c.ClickHouse.Table = "rated_usage"
	c.ClickHouse.Username = "default"
	return c
}

// kafkaClient is what every Kafka client of c shares.
func (c *Config) kafkaClient() kafka.ClientConfig {
	return kafka.ClientConfig{Brokers: c.Kafka.Brokers, MetadataMaxAge: c.Kafka.MetadataInterval}
}

// group is the consumer group of scaleOut: group.
func (c *Config) group() string {
	if c.Kafka.Group != "" {
		return c.Kafka.Group
	}
	return "tally-" + c.Tenant
}

// repartitionTopic is the internal topic of kafka.repartition.
func (c *Config) repartitionTopic() string { return "tally-" + c.Tenant + "-repartition" }

// changelogTopic is the tasks' changelog topic.
func (c *Config) changelogTopic() string {
	if c.Kafka.ChangelogTopic != "" {
		return c.Kafka.ChangelogTopic
	}
	return "tally-" + c.Tenant + "-changelog"
}

// kafkaSource configures the usage source.
func (c *Config) kafkaSource() kafka.SourceConfig {
	return kafka.SourceConfig{ClientConfig: c.kafkaClient(), Topics: c.Kafka.Topics, ReadUncommitted: c.Kafka.Isolation == "read_uncommitted"}
}

// engineConfig returns the engine's part of c, with the settings it takes
// from Kafka keys.
func (c *Config) engineConfig() engine.Config {
	ec := c.Config
	ec.PartitionDiscovery = c.Kafka.MetadataInterval
	ec.Partitioner = engine.Partitioner(c.Kafka.Partitioner)
	return ec
}

// flagName turns a config key into its flag: kafka.deadLetterTopic becomes
// kafka-dead-letter-topic.
func flagName(key string) string {
	var b strings.Builder
	for i, r := range key {
		switch {
		case r == '.':
			b.WriteByte('-')
		case unicode.IsUpper(r):
			if i > 0 && key[i-1] != '.' {
				b.WriteByte('-')
			}
			b.WriteRune(unicode.ToLower(r))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// bind registers one flag per config key on fs, writing into c.
func (c *Config) bind(fs *flag.FlagSet) {
	str := func(p *string, key, usage string) { fs.StringVar(p, flagName(key), *p, usage) }
	dur := func(p *time.Duration, key, usage string) { fs.DurationVar(p, flagName(key), *p, usage) }
	num := func(p *int, key, usage string) { fs.IntVar(p, flagName(key), *p, usage) }
	list := func(p *[]string, key, usage string) { fs.Var((*listValue)(p), flagName(key), usage) }

	str(&c.Tenant, "tenant", "tenant name, part of every row identity")
	str(&c.StateDir, "stateDir", "Pebble state folder (checkpoints, offsets, outbox)")
	str(&c.Plan, "plan", "price plan file, YAML or JSON: one plan, or plans: [...] with versions (required)")
	fs.Var(&c.DefaultPlan, flagName("defaultPlan"), "plan of customers without a subscription (unset: the only plan of a one-plan file; empty: none, their usage is dead-lettered as no_subscription)")
	str(&c.HTTPAddr, "httpAddr", "address of /metrics, /healthz, /readyz (loopback by default)")
	str(&c.OutputFile, "outputFile", "also write rated rows as JSON lines to this file")
	list(&c.Kafka.Brokers, "kafka.brokers", "Kafka bootstrap brokers, comma-separated host:port (required)")
	list(&c.Kafka.Topics, "kafka.topics", "usage topics to read, comma-separated")
	str(&c.Kafka.RatedTopic, "kafka.ratedTopic", "topic for rated rows (empty disables)")
	str(&c.Kafka.DeadLetterTopic, "kafka.deadLetterTopic", "topic for records that cannot be aggregated (required)")
	str(&c.Kafka.ProvisioningTopic, "kafka.provisioningTopic", "topic for provisioning actions when usage crosses an entitlement's thresholds (empty: none announced)")
	str(&c.Kafka.ChangelogTopic, "kafka.changelogTopic", "compacted topic of the tasks' state with scaleOut: local, partition p for task p, created if missing (default tally-<tenant>-changelog)")
	str(&c.Kafka.Group, "kafka.group", "consumer group of scaleOut: group, shared by every instance of the tenant (default tally-<tenant>)")
	fs.BoolVar(&c.Kafka.Repartition, flagName("kafka.repartition"), c.Kafka.Repartition, "re-key usage by customer through the internal topic tally-<tenant>-repartition, exactly once (scaleOut local or group), for producers that cannot key by customer")
	num(&c.Kafka.RepartitionPartitions, "kafka.repartitionPartitions", "partitions (tasks) of the repartition topic when Tally creates it (0 = those of the usage topics); fixed afterwards")
	str(&c.Kafka.InstanceID, "kafka.instanceId", "static group membership of scaleOut: group (e.g. the pod name): a restart within the session timeout keeps its tasks, without a rebalance")
	str(&c.Kafka.Isolation, "kafka.isolation", "read_committed (records of aborted transactions never count) or read_uncommitted")
	str(&c.Kafka.Partitioner, "kafka.partitioner", "how producers key usage by customer: murmur2 (Kafka's Java default), crc32 (librdkafka's), fnv1a (Sarama's, kafka-go's), none (no check)")
	dur(&c.Kafka.SessionTimeout, "kafka.sessionTimeout", "how long the group waits for an instance that stopped answering (crashed, lost, paused) before its tasks move to the others; a crashed instance restarted within it takes them back without a rebalance")
	dur(&c.Kafka.MetadataInterval, "kafka.metadataInterval", "how often topics are looked at again: partitions added are read within it (0 = never)")
	num(&c.Kafka.TopicPartitions, "kafka.topicPartitions", "partitions of an output topic Tally creates (-1 = the broker's default)")
	num(&c.Kafka.TopicReplication, "kafka.topicReplication", "replication factor of an output topic Tally creates (-1 = the broker's default)")
	str(&c.ClickHouse.Addr, "clickhouse.addr", "ClickHouse native address host:port (empty disables)")
	str(&c.ClickHouse.Database, "clickhouse.database", "ClickHouse database, created if absent")
	str(&c.ClickHouse.Table, "clickhouse.table", "ClickHouse table, created if absent")
	str(&c.ClickHouse.Username, "clickhouse.username", "ClickHouse user")
	str(&c.ClickHouse.Password, "clickhouse.password", "ClickHouse password")
	num(&c.Shards, "shards", "aggregator goroutines; 0 = one per CPU")
	dur(&c.Window, "window", "tumbling window size; must divide a day")
	dur(&c.CheckpointInterval, "checkpointInterval", "time between checkpoints")
	dur(&c.AllowedLateness, "allowedLateness", "how far the watermark trails the highest event time")
	dur(&c.Grace, "grace", "extra wait after a window's end before it closes")
	dur(&c.ReviseHorizon, "reviseHorizon", "how long after its end a window accepts late records as revisions")
	dur(&c.DedupHorizon, "dedupHorizon", "how far behind the watermark event ids are remembered; records further behind are late (0 = reviseHorizon)")
	dur(&c.DedupMemoryHorizon, "dedupMemoryHorizon", "how far behind the watermark whole ids stay in memory; older ones are in Pebble, found through the cold index (0 = allowedLateness + grace + 10s)")
	dur(&c.FinalizeAfter, "finalizeAfter", "keep windows revisable until their billing period ends plus this (0 = reviseHorizon rule)")
	dur(&c.MaxFutureSkew, "maxFutureSkew", "dead-letter records timed this far past the wall clock (0 = off)")
	str(&c.Horizon, "horizon", "dead-letter records timed before this RFC 3339 time (empty = off)")
	dur(&c.EmitOpenEvery, "emitOpenEvery", "emit provisional revisions of open windows this often; 0 = only on close")
	dur(&c.IdleTimeout, "idleTimeout", "a partition silent this long no longer holds the watermark back")
	num(&c.BillingAnchorDay, "billingAnchorDay", "day of the month billing periods start on (1..28), for customers without their own")
	str(&c.Timezone, "timezone", "IANA time zone of customers without their own (billing periods, customer-aligned windows)")
	num(&c.MaxUndeliveredCheckpoints, "maxUndeliveredCheckpoints", "checkpoints sinks may lag before consumption pauses")
	num(&c.SinkBatchRows, "sinkBatchRows", "rows per sink write; 0 = each sink its own (ClickHouse 50000: an INSERT has a fixed cost; others 10000)")
	num(&c.MaxLiveWindows, "maxLiveWindows", "memory budget in windows (~1.1 KB each); closed ones beyond it spill to disk; 0 = none")
	fs.IntVar(&c.GCPercent, flagName("gcPercent"), c.GCPercent, "how far the heap grows past live data before the Go collector runs (GOGC); higher trades memory for CPU (the GOGC variable wins)")
	str(&c.MemoryLimit, "memoryLimit", "soft memory limit of the process (GOMEMLIMIT): auto (80% of the container's or machine's memory), off, or a size such as 12GiB (the GOMEMLIMIT variable wins)")
	str(&c.ScaleOut, "scaleOut", "off: one engine reads every partition; local: one task per partition, each with its own state under stateDir/tasks and in a changelog topic; group: the same, instances sharing the tasks through kafka.group (docs/scale-out.md)")
	dur(&c.DrainTimeout, "drainTimeout", "a graceful stop waits this long for sinks; rows left stay in the outbox for the next start (0 = no limit)")
}

// optionalString is a string that tells unset from set to "": YAML's
// `key: ""` and the flag `--key=` both set it.
type optionalString struct {
	Value string
	IsSet bool
}

func (o *optionalString) String() string { return o.Value }

// Set implements flag.Value.
func (o *optionalString) Set(s string) error {
	o.Value, o.IsSet = s, true
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (o *optionalString) UnmarshalYAML(node *yaml.Node) error {
	if err := node.Decode(&o.Value); err != nil {
		return err
	}
	o.IsSet = true
	return nil
}

type listValue []string

func (l *listValue) String() string { return strings.Join(*l, ",") }
func (l *listValue) Set(s string) error {
	*l = nil
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}

// loadConfig builds the configuration from defaults, the --config file and
// flags, in that order, and validates it.
func loadConfig(name string, args []string, requireKafka bool) (Config, error) {
	// First pass: find --config. Errors are reported by the second pass.
	var path string
	pre := flag.NewFlagSet(name, flag.ContinueOnError)
	pre.SetOutput(io.Discard)
	pre.StringVar(&path, "config", "", "")
	throwaway := defaultConfig()
	throwaway.bind(pre)
	_ = pre.Parse(args)

	cfg := defaultConfig()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return cfg, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return cfg, fmt.Errorf("config %s: %w (keys are listed in README, Configuration)", path, err)
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.String("config", path, "YAML configuration file; every key is also a flag, and flags win")
	cfg.bind(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q; options are flags (--name=value)", fs.Arg(0))
	}
	return cfg, cfg.validate(requireKafka)
}

// keyError names a bad setting's config key and flag, and what is wrong.
func keyError(key, format string, args ...any) error {
	return fmt.Errorf("config key %s (flag --%s): %s", key, flagName(key), fmt.Sprintf(format, args...))
}

// engineError names the key and flag of an engine configuration error;
// other errors pass unchanged.
func engineError(err error) error {
	if ce, ok := errors.AsType[*engine.ConfigError](err); ok {
		return keyError(ce.Key, "%s", ce.Problem)
	}
	return err
}

// decoderOptions are the decoder's settings of c (validated).
func (c *Config) decoderOptions() []engine.DecoderOption {
	horizon, _ := c.horizon()
	opts := []engine.DecoderOption{engine.WithMaxFutureSkew(c.MaxFutureSkew), engine.WithHorizon(horizon)}
	if c.CSV != nil {
		csv, _ := engine.CompileCSV(*c.CSV)
		opts = append(opts, engine.WithCSV(csv))
	}
	return opts
}

// validate checks what the engine does not, and names the key and flag.
func (c *Config) validate(requireKafka bool) error {
	if c.CSV != nil {
		if _, err := engine.CompileCSV(*c.CSV); err != nil {
			return engineError(err)
		}
	}
	seenURL := make(map[string]bool)
	for i, w := range c.Webhooks {
		where := fmt.Sprintf("webhooks[%d]", i)
		if err := w.Validate(where); err != nil {
			return fmt.Errorf("config key %w", err)
		}
		if seenURL[w.URL] {
			return fmt.Errorf("config key %s.url: %q is listed twice; each webhook's progress is kept by its URL", where, w.URL)
		}
		seenURL[w.URL] = true
	}
	bad := keyError
	ec := c.engineConfig()
	if err := ec.Validate(); err != nil {
		return engineError(err)
	}
	switch {
	case c.StateDir == "":
		return bad("stateDir", "empty; give a folder for Tally's state")
	case c.Plan == "":
		return bad("plan", "missing; give the price plan file (see README, Plans)")
	case requireKafka && len(c.Kafka.Brokers) == 0:
		return bad("kafka.brokers", "missing; list the Kafka bootstrap brokers, e.g. kafka-1:9092,kafka-2:9092")
	case len(c.Kafka.Topics) == 0:
		return bad("kafka.topics", "empty; list the usage topics to read")
	case c.Kafka.DeadLetterTopic == "":
		return bad("kafka.deadLetterTopic", "empty; records that fail must go somewhere")
	case c.Kafka.ProvisioningTopic != "" && (slices.Contains(c.Kafka.Topics, c.Kafka.ProvisioningTopic) ||
		c.Kafka.ProvisioningTopic == c.Kafka.RatedTopic || c.Kafka.ProvisioningTopic == c.Kafka.DeadLetterTopic):
		return bad("kafka.provisioningTopic", "%q is also a usage, rated or dead-letter topic; give actions their own topic", c.Kafka.ProvisioningTopic)
	case c.ScaleOut != "" && c.ScaleOut != scaleOutOff && c.ScaleOut != scaleOutLocal && c.ScaleOut != scaleOutGroup:
		return bad("scaleOut", "%q is none of off, local, group", c.ScaleOut)
	case c.ScaleOut != "" && c.ScaleOut != scaleOutOff && c.Kafka.Partitioner == string(engine.PartitionerNone) && !c.Kafka.Repartition:
		return bad("kafka.partitioner", "none, but scaleOut: %s places each customer's state and fees in one task by it: name the producers' partitioner", c.ScaleOut)
	case c.Kafka.Repartition && c.ScaleOut == scaleOutOff:
		return bad("kafka.repartition", "needs scaleOut local or group: with one engine for every partition, state is not partition-owned and nothing needs re-keying")
	case c.Kafka.SessionTimeout < 6*time.Second || c.Kafka.SessionTimeout > 30*time.Minute:
		// Kafka brokers accept 6 s to 30 min by default
		// (group.min/max.session.timeout.ms).
		return bad("kafka.sessionTimeout", "%s is outside 6s..30m, what brokers accept by default", c.Kafka.SessionTimeout)
	case c.GCPercent < 25 || c.GCPercent > 10000:
		return bad("gcPercent", "%d is outside 25..10000", c.GCPercent)
	case c.Kafka.RepartitionPartitions < 0:
		return bad("kafka.repartitionPartitions", "%d is negative (0 = those of the usage topics)", c.Kafka.RepartitionPartitions)
	case c.Kafka.Isolation != "read_committed" && c.Kafka.Isolation != "read_uncommitted":
		return bad("kafka.isolation", "%q is neither read_committed nor read_uncommitted", c.Kafka.Isolation)
	case c.Kafka.TopicPartitions == 0 || c.Kafka.TopicPartitions < -1:
		return bad("kafka.topicPartitions", "%d must be at least 1, or -1 for the broker's default", c.Kafka.TopicPartitions)
	case c.Kafka.TopicReplication == 0 || c.Kafka.TopicReplication < -1 || c.Kafka.TopicReplication > 32767:
		return bad("kafka.topicReplication", "%d must be 1..32767, or -1 for the broker's default", c.Kafka.TopicReplication)
	}
	if _, err := memoryLimitBytes(c.MemoryLimit); err != nil {
		return bad("memoryLimit", "%v; or auto, or off", err)
	}
	for _, b := range c.Kafka.Brokers {
		if !strings.Contains(b, ":") {
			return bad("kafka.brokers", "%q has no port; use host:port", b)
		}
	}
	if c.MaxFutureSkew < 0 {
		return bad("maxFutureSkew", "%s is negative (0 disables)", c.MaxFutureSkew)
	}
	if _, err := c.horizon(); err != nil {
		return bad("horizon", "%v", err)
	}
	if c.ClickHouse.Addr != "" && !strings.Contains(c.ClickHouse.Addr, ":") {
		return bad("clickhouse.addr", "%q has no port; use host:port of the native protocol (9000)", c.ClickHouse.Addr)
	}
	if c.HTTPAddr != "" && !strings.Contains(c.HTTPAddr, ":") {
		return bad("httpAddr", "%q has no port; use host:port, e.g. 127.0.0.1:9464", c.HTTPAddr)
	}
	return nil
}

// horizon parses the horizon key; the zero time when unset.
func (c *Config) horizon() (time.Time, error) {
	if c.Horizon == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, c.Horizon)
	if err != nil {
		return t, fmt.Errorf("%q is not an RFC 3339 time such as 2026-01-01T00:00:00Z", c.Horizon)
	}
	return t, nil
}
