package main

// `tally bench`: the end-to-end benchmark. It preloads a Kafka topic (kfake
// in-process, or real brokers) with generated usage, measures a bare
// consume of it with kafka-go (the limit: no decoding, nothing kept), then
// runs the engine over it with checkpoints on and off, and finally measures
// freshness at a fixed rate. It prints one table.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-billing/tally/bench/gen"
	"github.com/tally-billing/tally/engine"
)

// benchPlan prices the generator's meters, IoT included.
const benchPlan = `id: bench
currency: EUR
rounding: {decimals: 6, mode: half_even}
meters:
  voice_seconds: {model: per_unit, unitPrice: "0.0004"}
  sms: {model: per_unit, unitPrice: "0.05"}
  data_bytes: {model: graduated, tiers: [{upTo: "1000000000", unitPrice: "0"}, {unitPrice: "0.000000002"}]}
  iot_bytes: {model: per_unit, unitPrice: "0.0000001", eventFee: "0.0001"}
`

type benchOptions struct {
	records, partitions, subscribers, iotPercent int
	dupPercent, latePercent                      float64
	brokers                                      string
	zipf                                         float64
	checkpoint                                   time.Duration
	freshRate                                    int
	freshFor                                     time.Duration
	toFile, planFile, stateDir, cpuProfile       string
	memProfile, stopProfile                      string
	scaleOut                                     string
}

func runBench(ctx context.Context, args []string, out io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o benchOptions
	fs.IntVar(&o.records, "records", 2_000_000, "records to preload")
	fs.IntVar(&o.partitions, "partitions", 4, "partitions of the usage topic")
	fs.IntVar(&o.subscribers, "subscribers", 100_000, "distinct customers")
	fs.Float64Var(&o.zipf, "zipf", 1.1, "Zipf exponent of customer activity (<= 1: uniform)")
	fs.IntVar(&o.iotPercent, "iot-percent", 20, "share of IoT telemetry records")
	fs.Float64Var(&o.dupPercent, "dup-percent", 1, "share of records sent twice (producer retries)")
	fs.Float64Var(&o.latePercent, "late-percent", 1, "share of records 2 minutes late (they revise closed windows)")
	fs.StringVar(&o.brokers, "brokers", "", "comma-separated brokers of a real cluster with topics usage, fresh, rated-usage and usage-dead-letters (default: an in-process kfake)")
	fs.DurationVar(&o.checkpoint, "checkpoint-interval", time.Second, "checkpoint interval of the checkpointed run")
	fs.IntVar(&o.freshRate, "fresh-rate", 100_000, "records/s of the freshness run (0 skips it)")
	fs.DurationVar(&o.freshFor, "fresh-for", 10*time.Second, "length of the freshness run")
	fs.StringVar(&o.toFile, "to-file", "", "only write the generated records to this JSON-lines file and exit")
	fs.StringVar(&o.planFile, "plan-file", "", "with --to-file, also write the plan pricing the generated meters to this file (bench/*.sh use it)")
	fs.StringVar(&o.stateDir, "state-dir", "", "parent folder of the runs' state (default: a temporary folder)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the checkpointed run to this file")
	fs.StringVar(&o.scaleOut, "scale-out", "off", "engine layout of the runs: off (one engine) or local (a task per partition, changelog on); local also measures a restore from the changelog")
	fs.StringVar(&o.stopProfile, "stop-cpuprofile", "", "write a CPU profile of the checkpointed run's graceful stop alone (final checkpoint and sink drain) to this file")
	fs.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile (every allocation since start) to this file after the checkpointed run")
	policy := defaultConfig()
	fs.IntVar(&policy.GCPercent, "gc-percent", policy.GCPercent, "the runs' gcPercent (as in tally run; the GOGC variable wins)")
	fs.StringVar(&policy.MemoryLimit, "memory-limit", policy.MemoryLimit, "the runs' memoryLimit (as in tally run; the GOMEMLIMIT variable wins)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	memory, err := applyMemoryPolicy(policy, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "bench: memory policy: %s\n", memory)
	g := gen.NewWith(uint64(time.Now().UnixNano()), o.subscribers, gen.Options{Zipf: o.zipf, IoTPercent: o.iotPercent})
	base := time.Now().UTC().Add(-time.Duration(o.records) * time.Microsecond)
	var prev message
	next := func(i int) message {
		if i > 0 && float64(g.Intn(100_000)) < o.dupPercent*1000 {
			return prev // a producer retry: same id, removed by dedup
		}
		at := base.Add(time.Duration(i) * time.Microsecond)
		if float64(g.Intn(100_000)) < o.latePercent*1000 {
			at = at.Add(-2 * time.Minute)
		}
		u := g.Next(at)
		prev = message{key: []byte(u.Customer), value: u.PlainJSON()}
		return prev
	}
	if o.toFile != "" {
		if o.planFile != "" {
			if err := os.WriteFile(o.planFile, []byte(benchPlan), 0o644); err != nil {
				return fmt.Errorf("bench: write the plan: %w", err)
			}
		}
		return writeRecords(o.toFile, o.records, next)
	}

	var brokers []string
	if o.brokers != "" {
		brokers = strings.Split(o.brokers, ",")
	} else {
		cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(int32(o.partitions), "usage", "fresh", "rated-usage"),
			kfake.SeedTopics(1, "usage-dead-letters"))
		if err != nil {
			return fmt.Errorf("bench: start kfake: %w", err)
		}
		defer cluster.Close()
		brokers = cluster.ListenAddrs()
	}

	start := time.Now()
	bytes, err := preload(ctx, brokers, "usage", o.records, next)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "bench: preloaded %d records (%.0f B each) over %d partitions in %s\n",
		o.records, float64(bytes)/float64(o.records), o.partitions, time.Since(start).Round(time.Millisecond))

	// Both clients, alternating, twice: kgo is the one Tally uses (its
	// best rate is the ratio's base), kafka-go the one it used before.
	var bare float64
	for round := range 2 {
		rate, err := bareConsumeKgo(ctx, brokers, "usage", o.records)
		if err != nil {
			return err
		}
		bare = max(bare, rate)
		old, err := bareConsumeKafkaGo(ctx, brokers, "usage")
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "bench: bare consume, round %d: kgo %.0f records/s, kafka-go %.0f records/s\n", round+1, rate, old)
	}

	parent := o.stateDir
	if parent == "" {
		if parent, err = os.MkdirTemp("", "tally-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(parent)
	}
	planPath := filepath.Join(parent, "plan.yaml")
	if err := os.WriteFile(planPath, []byte(benchPlan), 0o644); err != nil {
		return err
	}
	cfgFor := func(name string, checkpoint time.Duration, topic string) (Config, error) {
		cfg := defaultConfig()
		cfg.StateDir, cfg.Plan, cfg.HTTPAddr = filepath.Join(parent, name), planPath, ""
		cfg.Kafka.Brokers, cfg.Kafka.Topics = brokers, []string{topic}
		cfg.CheckpointInterval = checkpoint
		cfg.ScaleOut = o.scaleOut
		cfg.Kafka.ChangelogTopic = "tally-bench-" + name + "-changelog" // each run its own state
		cfg.Window = time.Minute
		cfg.ReviseHorizon = 2 * time.Hour // the preloaded stream spans records µs
		cfg.Meters = []engine.Meter{
			{Name: "voice_seconds", Aggregation: engine.AggSum, GroupBy: []string{"destination"}},
			{Name: "sms", Aggregation: engine.AggCount, GroupBy: []string{"destination"}},
			{Name: "data_bytes", Aggregation: engine.AggSum, GroupBy: []string{"rat"}},
			{Name: gen.IoTMeter, Aggregation: engine.AggSum, GroupBy: []string{"device"}},
		}
		return cfg, cfg.validate(true)
	}
	on, err := cfgFor("checkpointed", o.checkpoint, "usage")
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	withCP, err := timeRun(ctx, on, o.records, o.stopProfile, log)
	pprof.StopCPUProfile()
	if err != nil {
		return err
	}
	if o.memProfile != "" {
		f, err := os.Create(o.memProfile)
		if err != nil {
			return err
		}
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "bench: tally (scaleOut %s), checkpoints every %s: %.0f records/s to checkpointed state, %s CPU a record, %d checkpoints, %d live windows, %.0f heap B/window\n",
		o.scaleOut, o.checkpoint, withCP.rate, withCP.cpuPerRecord, withCP.checkpoints, withCP.liveWindows, withCP.heapPerWindow)
	if o.scaleOut == scaleOutLocal {
		if err := timeRestore(ctx, on, brokers, withCP.liveWindows, out, log); err != nil {
			return err
		}
	}
	off, err := cfgFor("uncheckpointed", time.Minute, "usage") // the longest interval: only the final checkpoint
	if err != nil {
		return err
	}
	noCP, err := timeRun(ctx, off, o.records, "", log)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "bench: tally, checkpoints off (one at the end): %.0f records/s, %s CPU a record\n", noCP.rate, noCP.cpuPerRecord)
	fmt.Fprintf(out, "bench: graceful stop of the checkpointed run (final checkpoint emitting %d open windows, rated topic drained): %s\n",
		withCP.liveWindows, withCP.stop.Round(time.Millisecond))

	var fresh freshness
	if o.freshRate > 0 {
		fcfg, err := cfgFor("fresh", o.checkpoint, "fresh")
		if err != nil {
			return err
		}
		if fresh, err = measureFreshness(ctx, fcfg, brokers, o, g, log); err != nil {
			return err
		}
	}
	overhead := 0.0
	if noCP.rate > 0 {
		overhead = 100 * (1 - withCP.rate/noCP.rate)
	}
	fmt.Fprintf(out, "\n| records | partitions | bare kgo consume rec/s | Tally rec/s | ratio | CPU µs/record | checkpoints off rec/s | checkpoint overhead | heap B/window | freshness p50 / p99 @ %d rec/s | peak RSS |\n", o.freshRate)
	fmt.Fprintln(out, "|---|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(out, "| %d | %d | %.0f | %.0f | %.0f%% | %.1f | %.0f | %.1f%% | %.0f | %s / %s | %d MiB |\n",
		o.records, o.partitions, bare, withCP.rate, 100*withCP.rate/bare, float64(withCP.cpuPerRecord)/1e3, noCP.rate, overhead, withCP.heapPerWindow,
		fresh.p50.Round(time.Millisecond), fresh.p99.Round(time.Millisecond), peakRSS()>>20)
	return nil
}

// message is one generated record: its key (the customer) and value.
type message struct{ key, value []byte }

// writeRecords writes n generated records to path as JSON lines.
func writeRecords(path string, n int, next func(int) message) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		w.Write(next(i).value)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// preload produces n records, keyed by customer with kgo's default
// partitioner (Kafka's murmur2, as Java producers); it returns their bytes.
func preload(ctx context.Context, brokers []string, topic string, n int, next func(int) message) (int64, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.LeaderAck()),
		kgo.DisableIdempotentWrite(), kgo.ProducerLinger(5*time.Millisecond), kgo.MaxBufferedRecords(100_000))
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	var bytes int64
	var failed atomic.Pointer[error]
	for i := range n {
		m := next(i)
		bytes += int64(len(m.value))
		cl.Produce(ctx, &kgo.Record{Key: m.key, Value: m.value}, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return 0, fmt.Errorf("bench: preload: %w", err)
	}
	if err := failed.Load(); err != nil {
		return 0, fmt.Errorf("bench: preload: %w", *err)
	}
	return bytes, nil
}

// timeRestore deletes the checkpointed run's task folders (a lost disk) and
// times the start until every task is restored from its changelog.
func timeRestore(ctx context.Context, cfg Config, brokers []string, windows int64, out io.Writer, log *slog.Logger) error {
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		return err
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, cfg.changelogTopic())
	if err != nil {
		return err
	}
	var records int64
	ends.Each(func(o kadm.ListedOffset) { records += o.Offset })
	start := time.Now()
	a, err := build(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.close()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, stop) }()
	for a.engine.Ready() != nil {
		select {
		case err := <-done:
			return fmt.Errorf("bench: restore run stopped: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	took := time.Since(start)
	close(stop)
	if err := <-done; err != nil {
		return err
	}
	fmt.Fprintf(out, "bench: restore of a lost state folder from the changelog (%d records, %d live windows): %s, %.0f changelog records/s\n",
		records, windows, took.Round(time.Millisecond), float64(records)/took.Seconds())
	return nil
}

type runResult struct {
	rate          float64
	checkpoints   uint64
	liveWindows   int64
	heapPerWindow float64
	// cpuPerRecord is the process's CPU time (user + system, kfake's
	// included) per record: steadier run to run than the rate on a shared VM.
	cpuPerRecord time.Duration
	// stop is the graceful stop: the final checkpoint, which emits every
	// open window as a provisional revision, and the sinks' drain.
	stop time.Duration
}

// timeRun runs the engine over the preloaded topic until every record is
// in a durable checkpoint, and reports the rate. With stopProfile, it
// writes a CPU profile of the graceful stop to that file.
func timeRun(ctx context.Context, cfg Config, n int, stopProfile string, log *slog.Logger) (runResult, error) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	a, err := build(ctx, cfg, log)
	if err != nil {
		return runResult{}, err
	}
	defer a.close()
	stop := make(chan struct{})
	done := make(chan error, 1)
	cpuBefore := processCPU()
	start := time.Now()
	go func() { done <- a.run(ctx, stop) }()
	var res runResult
	for {
		s := a.engine.Stats()
		if s.Consumed >= uint64(n) {
			break
		}
		select {
		case err := <-done:
			return res, fmt.Errorf("bench: engine stopped: %v", err)
		case <-time.After(2 * time.Millisecond):
		}
	}
	// Everything read is durable once a checkpoint cut after the last
	// record is; Shutdown makes that final checkpoint.
	if stopProfile != "" {
		f, err := os.Create(stopProfile)
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return res, err
		}
	}
	close(stop)
	stopping := time.Now()
	err = <-done
	res.stop = time.Since(stopping)
	if stopProfile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return res, err
	}
	elapsed := time.Since(start)
	res.cpuPerRecord = (processCPU() - cpuBefore) / time.Duration(n)
	// The stopped engine still holds its windows (a is open): its heap is
	// what they cost.
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	res.liveWindows = liveWindows(a)
	res.rate = float64(n) / elapsed.Seconds()
	res.checkpoints = a.engine.Stats().CheckpointSeq
	if res.liveWindows > 0 {
		res.heapPerWindow = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(res.liveWindows)
	}
	return res, nil
}

func liveWindows(a *app) int64 { return int64(metricSum(a, "tally_live_windows")) }

// metricSum is the sum of a gauge's or counter's samples in a's registry.
func metricSum(a *app, name string) float64 {
	families, err := a.registry.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

type freshness struct{ p50, p99 time.Duration }

// measureFreshness produces at rate for o.freshFor, with one probe record
// (a customer of its own) every 20 ms, and times each probe from produce to
// its window being visible in the live query API.
func measureFreshness(ctx context.Context, cfg Config, brokers []string, o benchOptions, g *gen.Generator, log *slog.Logger) (freshness, error) {
	a, err := build(ctx, cfg, log)
	if err != nil {
		return freshness{}, err
	}
	defer a.close()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, stop) }()
	w, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.DefaultProduceTopic("fresh"), kgo.RequiredAcks(kgo.LeaderAck()),
		kgo.DisableIdempotentWrite())
	if err != nil {
		return freshness{}, err
	}
	defer w.Close()

	const tick = 20 * time.Millisecond
	perTick := max(1, o.freshRate*int(tick)/int(time.Second))
	var mu sync.Mutex
	var latencies []time.Duration
	var polls sync.WaitGroup
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	end := time.Now().Add(o.freshFor)
	for i := 0; time.Now().Before(end); i++ {
		<-ticker.C
		now := time.Now().UTC()
		msgs := make([]*kgo.Record, 0, perTick)
		for range perTick - 1 {
			u := g.Next(now)
			msgs = append(msgs, &kgo.Record{Key: []byte(u.Customer), Value: u.PlainJSON()})
		}
		probe := "probe-" + strconv.Itoa(i)
		msgs = append(msgs, &kgo.Record{Key: []byte(probe), Value: []byte(fmt.Sprintf(
			`{"id":"%s","customer":"%s","meter":"sms","time":"%s","dims":{"destination":"uk"}}`, probe, probe, now.Format(time.RFC3339Nano)))})
		sent := time.Now()
		if err := w.ProduceSync(ctx, msgs...).FirstErr(); err != nil {
			return freshness{}, fmt.Errorf("bench: freshness produce: %w", err)
		}
		polls.Add(1)
		go func() {
			defer polls.Done()
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				u, err := a.engine.Usage(ctx, engine.UsageRequest{Customer: probe, Windows: true})
				if err == nil && len(u.Windows) > 0 {
					mu.Lock()
					latencies = append(latencies, time.Since(sent))
					mu.Unlock()
					return
				}
			}
		}()
	}
	polls.Wait()
	close(stop)
	if err := <-done; err != nil {
		return freshness{}, err
	}
	if len(latencies) == 0 {
		return freshness{}, errors.New("bench: no probe became visible")
	}
	slices.Sort(latencies)
	return freshness{p50: latencies[len(latencies)/2], p99: latencies[len(latencies)*99/100]}, nil
}

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peakRSS is the process's peak resident set (kfake's memory included).
func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
