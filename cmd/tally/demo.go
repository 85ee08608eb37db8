package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-billing/tally/bench/gen"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
)

//go:embed demo_plan.yaml
var demoPlan []byte

// demoOptions are the flags of `tally demo`.
type demoOptions struct {
	duration     time.Duration
	rate         int
	subscribers  int
	zipf         float64
	partitions   int
	duplicatePct float64
	malformedPct float64
	clickhouse   string
	output       string
	stateDir     string
	httpAddr     string
	reportEvery  time.Duration
	window       time.Duration
}

// runDemo starts an in-process Kafka cluster, a generator of telecom usage
// and the engine, and prints a live line until --duration or Ctrl-C.
func runDemo(ctx context.Context, args []string, stop <-chan struct{}, out io.Writer, log *slog.Logger) error {
	var o demoOptions
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (0 = until Ctrl-C)")
	fs.IntVar(&o.rate, "rate", 50000, "records produced per second (0 = as fast as possible)")
	fs.IntVar(&o.subscribers, "subscribers", 5000, "number of subscribers")
	fs.Float64Var(&o.zipf, "zipf", 1.1, "Zipf exponent of the subscribers' traffic (> 1: a few heavy users and a long tail, as in real traffic; 0 = uniform)")
	fs.IntVar(&o.partitions, "partitions", 4, "partitions of the usage topic")
	fs.Float64Var(&o.duplicatePct, "duplicate-pct", 1, "percent of records produced twice (producer retries)")
	fs.Float64Var(&o.malformedPct, "malformed-pct", 0.1, "percent of malformed records (go to dead letters)")
	fs.StringVar(&o.clickhouse, "clickhouse", "", "ClickHouse native address; rated rows go there (default: a JSON-lines file)")
	fs.StringVar(&o.output, "output", "tally-demo-rated.jsonl", "JSON-lines file of rated rows when --clickhouse is not given")
	fs.StringVar(&o.stateDir, "state-dir", "", "state folder (default: a new temporary folder)")
	fs.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:9464", "address of the console (/), the API, /metrics, /healthz, /readyz")
	fs.DurationVar(&o.reportEvery, "report-every", 5*time.Second, "how often to print the live line")
	fs.DurationVar(&o.window, "window", time.Minute, "window size")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.subscribers < 1 || o.partitions < 1 || o.rate < 0 {
		return fmt.Errorf("demo: --subscribers and --partitions must be >= 1, --rate >= 0")
	}
	if o.zipf != 0 && o.zipf <= 1 {
		return fmt.Errorf("demo: --zipf %g: the exponent must be > 1 (or 0 for uniform traffic)", o.zipf)
	}

	cluster, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.SeedTopics(int32(o.partitions), "usage"),
		kfake.SeedTopics(int32(o.partitions), "rated-usage"),
		kfake.SeedTopics(1, "usage-dead-letters"),
		kfake.SeedTopics(int32(o.partitions), "provisioning"))
	if err != nil {
		return fmt.Errorf("demo: start in-process Kafka: %w", err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()

	if o.stateDir == "" {
		if o.stateDir, err = os.MkdirTemp("", "tally-demo-state-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.stateDir)
	}
	planPath := o.stateDir + "-plan.yaml"
	if err := os.WriteFile(planPath, demoPlan, 0o644); err != nil {
		return err
	}
	defer os.Remove(planPath)

	cfg := defaultConfig()
	cfg.StateDir, cfg.Plan, cfg.HTTPAddr = o.stateDir, planPath, o.httpAddr
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.ProvisioningTopic = "provisioning"
	cfg.Window, cfg.EmitOpenEvery = o.window, 5*time.Second
	cfg.Meters = []engine.Meter{
		{Name: "voice_seconds", Aggregation: engine.AggSum, GroupBy: []string{"destination"}, Unit: "seconds"},
		{Name: "sms", Aggregation: engine.AggCount, GroupBy: []string{"destination"}, Unit: "messages"},
		{Name: "data_bytes", Aggregation: engine.AggSum, GroupBy: []string{"rat"}, Unit: "bytes"},
	}
	if o.clickhouse != "" {
		cfg.ClickHouse.Addr = o.clickhouse
	} else {
		cfg.OutputFile = o.output
	}
	if err := cfg.validate(true); err != nil {
		return err
	}
	if _, err := applyMemoryPolicy(cfg, log); err != nil {
		return err
	}
	a, err := build(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()

	fmt.Fprintf(out, "tally demo: Kafka (in-process) at %s, topics usage/rated-usage/usage-dead-letters/provisioning\n", strings.Join(brokers, ","))
	fmt.Fprintf(out, "tally demo: %d subscribers (Zipf %g), %d records/s; console at http://%s/ (metrics at /metrics)\n", o.subscribers, o.zipf, o.rate, o.httpAddr)
	if cfg.OutputFile != "" {
		fmt.Fprintf(out, "tally demo: rated rows -> %s (JSON lines; keep the highest revision per identity)\n", cfg.OutputFile)
	} else {
		fmt.Fprintf(out, "tally demo: rated rows -> ClickHouse %s, table tally.rated_usage\n", cfg.ClickHouse.Addr)
	}

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	stopAll := make(chan struct{})
	go func() {
		var timeout <-chan time.Time
		if o.duration > 0 {
			timeout = time.After(o.duration)
		}
		select {
		case <-stop:
		case <-timeout:
		case <-runCtx.Done():
		}
		close(stopAll)
	}()

	genDone := make(chan error, 1)
	go func() { genDone <- produceDemo(runCtx, stopAll, brokers, o) }()
	go report(runCtx, a, o.reportEvery, o.subscribers, out)

	err = a.run(ctx, stopAll)
	cancelRun()
	if gerr := <-genDone; err == nil && gerr != nil {
		err = gerr
	}
	s := a.engine.Stats()
	fmt.Fprintf(out, "tally demo: stopped: %d records consumed, %d windows emitted, %d dead letters, %d duplicates removed, revenue %s\n",
		s.Consumed, s.WindowsEmitted, s.DeadLetters, s.Duplicates, formatRevenue(s))
	return err
}

// produceDemo writes generated usage to the usage topic at the configured
// rate, in real time, until stop closes.
func produceDemo(ctx context.Context, stop <-chan struct{}, brokers []string, o demoOptions) error {
	w, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("usage"), kgo.ProducerLinger(5*time.Millisecond))
	if err != nil {
		return fmt.Errorf("demo generator: %w", err)
	}
	defer w.Close()
	g := gen.NewWith(uint64(time.Now().UnixNano()), o.subscribers, gen.Options{Zipf: o.zipf})
	sla := newDemoSLA(o.subscribers, time.Now())
	const tick = 20 * time.Millisecond
	perTick := o.rate * int(tick) / int(time.Second)
	if o.rate == 0 {
		perTick = 20000
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	msgs := make([]*kgo.Record, 0, perTick+perTick/10)
	for {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		default:
		}
		if o.rate > 0 {
			select {
			case <-ticker.C:
			case <-stop:
				return nil
			}
		}
		msgs = msgs[:0]
		now := time.Now()
		for range perTick {
			if float64(g.Intn(100000)) < o.malformedPct*1000 {
				msgs = append(msgs, &kgo.Record{Key: []byte("malformed"), Value: g.Malformed()})
				continue
			}
			u := g.Next(now)
			var value []byte
			if g.Intn(2) == 0 {
				value = u.CloudEventJSON()
			} else {
				value = u.PlainJSON()
			}
			msgs = append(msgs, &kgo.Record{Key: []byte(u.Customer), Value: value})
			if float64(g.Intn(100000)) < o.duplicatePct*1000 {
				// A producer retry: the same bytes again.
				msgs = append(msgs, &kgo.Record{Key: []byte(u.Customer), Value: value})
			}
		}
		msgs = sla.append(msgs, g, now)
		if err := w.ProduceSync(ctx, msgs...).FirstErr(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("demo generator: produce: %w", err)
		}
	}
}

// report prints the live line every interval.
func report(ctx context.Context, a *app, every time.Duration, subscribers int, out io.Writer) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	prev, prevAt := a.engine.Stats(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			s := a.engine.Stats()
			rate := float64(s.Consumed-prev.Consumed) / now.Sub(prevAt).Seconds()
			wm := "-"
			if !s.Watermark.IsZero() {
				wm = s.Watermark.Format("15:04:05")
			}
			fmt.Fprintf(out, "%s  %9.0f rec/s  lag %7d  consumed %10d  windows %8d  dead %6d  dups %6d  watermark %s  checkpoint %d  revenue %s  limits %s (actions %d)  sla %s (credit rows %d)\n",
				now.Format("15:04:05"), rate, s.Lag, s.Consumed, s.WindowsEmitted, s.DeadLetters, s.Duplicates, wm, s.CheckpointSeq, formatRevenue(s),
				limitStates(ctx, a.engine, subscribers), s.Actions, slaStates(ctx, a.engine, subscribers), s.Credits)
			prev, prevAt = s, now
		}
	}
}

// limitStates counts the demo subscribers by the state of their
// entitlements (the worst of them), from the live API's source.
func limitStates(ctx context.Context, q usageQuerier, subscribers int) string {
	rank := map[rating.EntitlementState]int{rating.StateWarning: 1, rating.StateThrottled: 2, rating.StateSuspended: 3}
	var mu sync.Mutex
	var counts [4]int
	err := eachSubscriber(ctx, subscribers, func(ctx context.Context, customer string) error {
		e, err := q.Entitlements(ctx, customer)
		if err != nil {
			return err
		}
		worst := 0
		for _, r := range e.Entitlements {
			worst = max(worst, rank[r.State])
		}
		mu.Lock()
		counts[worst]++
		mu.Unlock()
		return nil
	})
	if err != nil {
		return "-"
	}
	return fmt.Sprintf("%d warning %d throttled %d suspended", counts[1], counts[2], counts[3])
}

// eachSubscriber calls fn for every demo subscriber, 32 at a time (a
// shard answers the queries waiting for it together, between batches),
// within 3 s: the live line must not stall.
func eachSubscriber(ctx context.Context, subscribers int, fn func(ctx context.Context, customer string) error) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	next := make(chan int)
	errs := make(chan error, 32)
	for range 32 {
		go func() {
			var err error
			for i := range next {
				if err == nil {
					err = fn(ctx, fmt.Sprintf("sub-%06d", i))
				}
			}
			errs <- err
		}()
	}
	for i := range subscribers {
		next <- i
	}
	close(next)
	var first error
	for range 32 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func formatRevenue(s engineStats) string {
	if len(s.Revenue) == 0 {
		return "0"
	}
	var parts []string
	for cur, amount := range s.Revenue {
		parts = append(parts, amount.StringFixed(2)+" "+cur)
	}
	return strings.Join(parts, ", ")
}
