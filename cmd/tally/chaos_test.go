package main

// The crash harness: the real binary against kfake and ClickHouse, killed
// with SIGKILL again and again (by itself, armed with TALLY_CRASH_FAULTS,
// during Pebble checkpoints, ClickHouse inserts and Kafka produces of rated
// rows, or from outside at random moments), restarted on the same state
// folder each time. The workload is bench/oracle's, in a rich
// configuration: random plans with tiers, allowances, commitments, flat
// fees, per-N prices and per-event bands or destinations with connect fees,
// two plan versions, configured subscriptions and subscription events with
// mid-period changes, six customers in five zones with anchor days other
// than 1, 5m to MONTH windows (UTC or customer-aligned), finalizeAfter,
// retries, late records that revise closed windows, and malformed records.
// Once the stream is drained, ClickHouse (FINAL) and the rated topic
// (highest revision) must each pass the oracle's check: every window, the
// money of every period to the cent, every fee row; and the provisioning
// topic must hold the oracle's actions (units limits on data and sms,
// subscription events, resumes): none lost, none with two bodies. make
// test runs it with 10 kills; make chaos with 100. TALLY_CHAOS_SEED replays a workload.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/bench/oracle"
	"github.com/tally-billing/tally/engine"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestChaosKills runs the chaos in every engine layout: one engine for
// every partition (scaleOut: off), one task per partition, each with its
// own state and changelog (scaleOut: local), the same as a group of one
// (scaleOut: group), and that with the input re-keyed through the
// repartition topic (kafka.repartition), killed mid-transaction too.
func TestChaosKills(t *testing.T) {
	for _, mode := range []struct {
		name, scaleOut string
		repartition    bool
	}{{"scaleOut=off", scaleOutOff, false}, {"scaleOut=local", scaleOutLocal, false}, {"scaleOut=group", scaleOutGroup, false},
		{"scaleOut=group,repartition", scaleOutGroup, true}} {
		t.Run(mode.name, func(t *testing.T) { chaosKills(t, mode.scaleOut, mode.repartition) })
	}
}

func chaosKills(t *testing.T, scaleOut string, repartition bool) {
	chAddr := clickHouseAddr(t)
	kills := envInt("TALLY_CHAOS_KILLS", 10)
	records := envInt("TALLY_CHAOS_RECORDS", 20000)
	seed := uint64(envInt("TALLY_CHAOS_SEED", int(rand.Uint32())))
	t.Logf("seed %d (replay with TALLY_CHAOS_SEED=%d)", seed, seed)
	brokers := startKafka(t, 3)
	bin := buildBinary(t)
	dir := t.TempDir()
	world, opts, s, plan := chaosWorld(t, seed, records, dir, 3)
	database := testDatabase(t)
	config := filepath.Join(dir, "tally.yaml")
	err := os.WriteFile(config, []byte(fmt.Sprintf(`
plan: %s
stateDir: %s
httpAddr: 127.0.0.1:0
kafka:
  brokers: [%s]
  ratedTopic: rated-usage
  provisioningTopic: provisioning
clickhouse:
  addr: %s
  database: %s
checkpointInterval: 50ms
emitOpenEvery: 150ms
sinkBatchRows: 200
allowedLateness: 10m
finalizeAfter: 72h
# Ids of late records leave memory at once: retries re-stamped by the
# producer are found through the cold index, across kills.
dedupMemoryHorizon: 1m
scaleOut: %s
%s`, plan, filepath.Join(dir, "state"), strings.Join(brokers, ", "), chAddr, database, scaleOut, world.ConfigYAML())), 0o644)
	args := []string{"run", "--config", config}
	if scaleOut == scaleOutGroup {
		// A static member under one id for every run, as a pod name
		// would be: each restart takes its tasks back at once instead of
		// waiting for the killed member's session to expire. (With
		// dynamic members, kfake's classic group also stalls for minutes
		// on the chain of dead members that kills every 0.2-2.7 s leave:
		// each restart restarts its join phase.)
		args = append(args, "--kafka-instance-id", "chaos-1")
	}
	if repartition {
		args = append(args, "--kafka-repartition")
	}
	if err != nil {
		t.Fatal(err)
	}
	// Half the stream before the first run, the rest while it is killed
	// and restarted.
	half := len(s.msgs) / 2
	produce(t, brokers, "usage", s.msgs[:half])
	produced := false

	faultLine := regexp.MustCompile(`TALLY_FAULT kill at (\w+)`)
	byPoint := make(map[string]int)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for killed := 0; killed < kills; killed++ {
		if killed == kills/2 && !produced {
			produce(t, brokers, "usage", s.msgs[half:])
			produced = true
		}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), faultsEnv+"=checkpoint=0.12,clickhouse=0.04,kafka=0.04")
		var logs strings.Builder
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			m := faultLine.FindStringSubmatch(logs.String())
			if m == nil {
				t.Fatalf("run %d ended without an injected kill: %v\n%s", killed+1, err, logs.String())
			}
			byPoint[m[1]]++
		case <-time.After(time.Duration(200+rng.IntN(2500)) * time.Millisecond):
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-done
			if m := faultLine.FindStringSubmatch(logs.String()); m != nil {
				byPoint[m[1]]++ // it killed itself as we did
			} else {
				byPoint["external"]++
			}
		}
		if strings.Contains(logs.String(), "panic:") {
			t.Fatalf("run %d panicked:\n%s", killed+1, logs.String())
		}
		// Partition-owned tasks: a machine lost with its disk. Its tasks
		// come back from their changelog alone.
		if scaleOut != scaleOutOff && (rng.IntN(3) == 0 || killed == kills-2) {
			lost := filepath.Join(dir, "state", "tasks", strconv.Itoa(rng.IntN(3)))
			if rng.IntN(3) == 0 {
				lost = filepath.Join(dir, "state") // every task, and the node's record
			}
			if err := os.RemoveAll(lost); err != nil {
				t.Fatal(err)
			}
			byPoint["state folder deleted"]++
		}
	}
	if !produced {
		produce(t, brokers, "usage", s.msgs[half:])
	}

	// The last run, unharmed, drains the stream. Its last record moves the
	// watermark 40 days past the rest (less the allowed lateness).
	cmd, logs := startBinary(t, bin, args...)
	t.Cleanup(func() {
		if t.Failed() {
			out := logs.String()
			t.Logf("last run's log (end):\n%s", out[max(0, len(out)-4000):])
			if m := regexp.MustCompile(`addr=(http://[0-9.:]+/metrics)`).FindStringSubmatch(out); m != nil {
				if _, body, err := httpGet(m[1]); err == nil {
					for _, line := range strings.Split(body, "\n") {
						if strings.HasPrefix(line, "tally_watermark") || strings.HasPrefix(line, "tally_consumer_lag") || strings.HasPrefix(line, "tally_records_consumed") {
							t.Log(line)
						}
					}
				}
			}
		}
	})
	watermark := opts.Start.Add(opts.Span + opts.CloseAfter - 10*time.Minute)
	report := waitOracle(t, world, watermark, chAddr, database, brokers)
	var owed int
	waitFor(t, 60*time.Second, "the provisioning topic to hold the oracle's actions", func() string {
		var problems []string
		problems, owed = world.CheckActions(provisioningActions(t, brokers), watermark)
		if len(problems) > 0 {
			return summarizeProblems(problems)
		}
		return ""
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("last run after SIGTERM: %v\n%s", err, logs)
	}
	checkDeadLetters(t, []string(brokers), s)
	checkClickHouseDeadLetters(t, chAddr, database, s)
	malformed := 0
	for _, m := range s.msgs {
		if s.malformed[m[1]] {
			malformed++
		}
	}
	t.Logf("chaos: %d records (%d malformed: dead letters), %d windows, %d periods priced to the cent, %d fee rows, %d SLA credits, %d provisioning actions; %d kills by where they landed: %v; ClickHouse, rated topic, provisioning topic and oracle agree",
		len(s.msgs), malformed, report.Windows, report.ExactPeriods, report.FeeRows, report.Credits, owed, kills, byPoint)
}

// chaosWorld generates the oracle's world of seed (75 days of records,
// retries, late records, a record 40 days past the end that closes every
// period), its stream with malformed records mixed in, and writes its plans
// to dir.
func chaosWorld(t *testing.T, seed uint64, records int, dir string, partitions int32) (*oracle.World, oracle.Options, *stream, string) {
	t.Helper()
	opts := oracle.Options{Start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Span: 75 * 24 * time.Hour,
		Jitter: 5 * time.Minute, LatePercent: 1, LateBy: 20 * time.Minute, RetryPercent: 2, CloseAfter: 40 * 24 * time.Hour}
	opts.MeanGap = opts.Span / time.Duration(records)
	// TALLY_CHAOS_SLA=0 leaves SLA objectives and outages out (to tell an
	// SLA defect from another).
	opts.NoSLA = os.Getenv("TALLY_CHAOS_SLA") == "0"
	world := oracle.Generate(seed, opts)
	t.Log(world.Describe())
	plan := filepath.Join(dir, "plans.yaml")
	if err := os.WriteFile(plan, []byte(world.PlansYAML()), 0o644); err != nil {
		t.Fatal(err)
	}
	return world, opts, chaosStream(seed, world, partitions), plan
}

// waitOracle waits until ClickHouse FINAL and the rated topic pass the
// oracle's check of world at watermark, and returns ClickHouse's report.
func waitOracle(t *testing.T, world *oracle.World, watermark time.Time, chAddr, database string, brokers []string) oracle.Report {
	t.Helper()
	var report oracle.Report
	waitFor(t, 180*time.Second, "ClickHouse and the rated topic to pass the oracle's check", func() string {
		rows, err := clickHouseRows(chAddr, database)
		if err != nil {
			return err.Error()
		}
		if report = world.Check(rows, watermark); len(report.Problems) > 0 {
			return "ClickHouse: " + summarizeProblems(report.Problems)
		}
		if r := world.Check(ratedTopicRows(t, brokers), watermark); len(r.Problems) > 0 {
			return "rated topic: " + summarizeProblems(r.Problems)
		}
		return ""
	})
	return report
}

// chaosStream is world's records as key/value messages, with malformed
// records (0.5%) mixed in.
func chaosStream(seed uint64, world *oracle.World, partitions int32) *stream {
	rng := rand.New(rand.NewPCG(seed, 9))
	s := &stream{malformed: make(map[string]bool)}
	for i, r := range world.Records() {
		if rng.IntN(200) == 0 {
			bad := []string{`{"id": "broken", "customer": `,
				fmt.Sprintf(`{"id":"m%d","customer":"c0","meter":"data","time":"yesterday","value":1}`, i),
				fmt.Sprintf(`{"id":"m%d","customer":"c0","meter":"teleportation","time":"2026-01-01T00:00:00Z","value":1}`, i),
				fmt.Sprintf(`{"id":"m%d","customer":"c0","meter":"data","time":"2026-01-01T00:00:00Z","value":"NaN"}`, i)}[rng.IntN(4)]
			s.malformed[bad] = true
			s.msgs = append(s.msgs, [2]string{"bad", bad})
		}
		if r.Every { // a shared service's event: one copy to each partition
			for _, key := range everyPartitionKeys(partitions) {
				s.msgs = append(s.msgs, [2]string{key, string(r.Value)})
			}
			continue
		}
		s.msgs = append(s.msgs, [2]string{r.Customer, string(r.Value)})
	}
	return s
}

// everyPartitionKeys are keys whose murmur2 picks each of the usage
// topic's partitions.
func everyPartitionKeys(partitions int32) []string {
	var keys []string
	for p := range partitions {
		for k := 0; ; k++ {
			key := fmt.Sprintf("every-%d", k)
			if engine.PartitionerMurmur2.Misplaced(engine.PartitionID{Topic: "usage", Partition: p}, key, int(partitions)) == "" {
				keys = append(keys, key)
				break
			}
		}
	}
	return keys
}

// clickHouseRows reads the highest revision of every row with FINAL.
func clickHouseRows(addr, database string) ([]oracle.Row, error) {
	lines, err := clickHouseTSV(addr, "SELECT meter, customer, group_key, toUInt32(window_start), toUInt32(window_end), toString(quantity), event_count, toString(amount), final FROM "+
		database+".rated_usage FINAL FORMAT TSV", 9)
	if err != nil {
		return nil, err
	}
	var rows []oracle.Row
	for _, f := range lines {
		start, _ := strconv.ParseInt(f[3], 10, 64)
		end, _ := strconv.ParseInt(f[4], 10, 64)
		count, _ := strconv.ParseUint(f[6], 10, 64)
		rows = append(rows, oracle.Row{Meter: f[0], Customer: f[1], GroupKey: f[2], WindowStart: time.Unix(start, 0).UTC(),
			WindowEnd: time.Unix(end, 0).UTC(), Quantity: decimal.RequireFromString(f[5]), Count: count,
			Amount: decimal.RequireFromString(f[7]), Final: f[8] == "1"})
	}
	return rows, nil
}

// ratedTopicRows keeps the highest revision per key of the rated topic.
func ratedTopicRows(t *testing.T, brokers []string) []oracle.Row {
	t.Helper()
	var rows []oracle.Row
	for _, r := range ratedTopicBest(t, brokers) {
		rows = append(rows, oracle.Row{Meter: r.Meter, Customer: r.Customer, GroupKey: r.GroupKey, WindowStart: r.WindowStart,
			WindowEnd: r.WindowEnd, Quantity: r.Quantity, Count: r.Count, Amount: r.Amount, Final: r.Final})
	}
	return rows
}

// provisioningActions reads every message of the provisioning topic,
// re-deliveries included.
func provisioningActions(t *testing.T, brokers []string) []oracle.Action {
	t.Helper()
	var out []oracle.Action
	for _, m := range consume(t, brokers, "provisioning") {
		var a engine.ProvisioningAction
		if err := json.Unmarshal([]byte(m.value), &a); err != nil || m.key != a.Customer {
			t.Fatalf("provisioning message %+v (%v): want an action keyed by its customer", m, err)
		}
		id := a.ID
		if a.Event.ID != "" { // a lifecycle action: the oracle names its event by time
			id = a.Customer + "|@subscription|" + a.At.Format(time.RFC3339) + "|" + string(a.Action)
		}
		out = append(out, oracle.Action{ID: id, Action: string(a.Action), Used: a.Used, At: a.At})
	}
	return out
}

// summarizeProblems keeps a report readable.
func summarizeProblems(problems []string) string {
	sort.Strings(problems)
	if len(problems) > 5 {
		problems = append(problems[:5], fmt.Sprintf("... %d more", len(problems)-5))
	}
	return strings.Join(problems, "; ")
}
