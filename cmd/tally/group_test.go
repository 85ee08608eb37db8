package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGroupInstances: instances in one consumer group (scaleOut: group),
// separate processes, share a keyed stream of the oracle's world (plans
// with tiers, packages, allowances, commitments and fees, customers in
// several time zones and anchor days, subscriptions changing plans,
// retries, late records, malformed ones). During the run one is killed
// with SIGKILL and comes back on its disk, one is killed and its state
// folder deleted (a lost machine), a fourth joins and one leaves
// gracefully. At the end ClickHouse FINAL and the rated topic (no revision
// of a row written with two different totals) agree with the oracle's
// independent recomputation per customer, meter and window, and money
// per billing period to the cent, fee rows included.
func TestGroupInstances(t *testing.T) {
	chAddr := clickHouseAddr(t)
	seed := uint64(envInt("TALLY_GROUP_SEED", int(rand.Uint32())))
	t.Logf("seed %d (replay with TALLY_GROUP_SEED=%d)", seed, seed)
	brokers := startKafka(t, 6)
	bin := buildBinary(t)
	dir := t.TempDir()
	world, opts, s, plan := chaosWorld(t, seed, 18000, dir, 6)
	database := testDatabase(t)
	config := func(name string) string {
		path := filepath.Join(dir, name+".yaml")
		err := os.WriteFile(path, []byte(fmt.Sprintf(`
plan: %s
stateDir: %s
httpAddr: 127.0.0.1:0
scaleOut: group
kafka:
  brokers: [%s]
  ratedTopic: rated-usage
  group: billing
clickhouse:
  addr: %s
  database: %s
checkpointInterval: 100ms
emitOpenEvery: 200ms
sinkBatchRows: 500
idleTimeout: 2s
allowedLateness: 10m
finalizeAfter: 72h
%s`, plan, filepath.Join(dir, "state-"+name), strings.Join(brokers, ", "), chAddr, database, world.ConfigYAML())), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		return path
	}
	type instance struct {
		cmd  *exec.Cmd
		logs *strings.Builder
	}
	running := make(map[string]*instance)
	allLogs := make(map[string]*strings.Builder)
	run := func(name string) {
		cmd, logs := startBinary(t, bin, "run", "--config", config(name))
		running[name] = &instance{cmd, logs}
		allLogs[fmt.Sprintf("%s#%d", name, len(allLogs))] = logs
	}
	kill := func(name string) {
		in := running[name]
		_ = in.cmd.Process.Signal(syscall.SIGKILL)
		_ = in.cmd.Wait()
		delete(running, name)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for name, in := range running {
				out := in.logs.String()
				t.Logf("instance %s log (end):\n%s", name, out[max(0, len(out)-3000):])
			}
		}
	})
	third := len(s.msgs) / 3
	produce(t, brokers, "usage", s.msgs[:third])
	run("a")
	run("b")
	run("c")
	time.Sleep(3 * time.Second)

	kill("a") // a crash: its tasks move after the session timeout, or back to it
	produce(t, brokers, "usage", s.msgs[third:2*third])
	time.Sleep(time.Second)
	run("a")
	time.Sleep(2 * time.Second)

	kill("b") // a machine lost with its disk
	if err := os.RemoveAll(filepath.Join(dir, "state-b")); err != nil {
		t.Fatal(err)
	}
	run("b")
	run("d") // a fourth joins
	time.Sleep(2 * time.Second)

	c := running["c"] // one leaves gracefully
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("instance c after SIGTERM: %v\n%s", err, c.logs)
	}
	delete(running, "c")
	// The rest ends with a record 40 days ahead, on one partition: every
	// task closes its windows and periods, whichever instance runs it (the
	// group shares its tasks' time).
	produce(t, brokers, "usage", s.msgs[2*third:])

	watermark := opts.Start.Add(opts.Span + opts.CloseAfter - 10*time.Minute)
	report := waitOracle(t, world, watermark, chAddr, database, brokers)
	for name, in := range running {
		if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := in.cmd.Wait(); err != nil {
			t.Errorf("instance %s after SIGTERM: %v", name, err)
		}
	}
	for name, logs := range allLogs {
		if strings.Contains(logs.String(), "panic:") {
			t.Errorf("instance %s panicked:\n%s", name, logs)
		}
		if os.Getenv("TALLY_GROUP_LOGS") != "" {
			out := logs.String()
			t.Logf("instance %s log:\n%s", name, out[max(0, len(out)-2500):])
		}
		t.Logf("instance %s: %d task starts, %d moved away, %d restores from the changelog", name,
			strings.Count(logs.String(), `msg="task started"`), len(regexp.MustCompile(`msg="task stopped" task=\d+ graceful=true`).FindAllString(logs.String(), -1)),
			strings.Count(logs.String(), "task restored from its changelog"))
	}
	checkDeadLetters(t, brokers, s)
	checkClickHouseDeadLetters(t, chAddr, database, s)
	t.Logf("group: %d records, %d windows, %d periods priced to the cent, %d fee rows; ClickHouse, rated topic and oracle agree",
		len(s.msgs), report.Windows, report.ExactPeriods, report.FeeRows)
}
