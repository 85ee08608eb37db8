package main

import (
	"fmt"

	"github.com/shopspring/decimal"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestGroupInstances: instances in one consumer group (scaleOut: group),
// separate processes, share a keyed stream with duplicates, late records
// and malformed ones. During the run one is killed with SIGKILL and comes
// back on its disk, one is killed and its state folder deleted (a lost
// machine), a fourth joins and one leaves gracefully. At the end ClickHouse
// FINAL and the rated topic (read committed; no revision of a row written
// with two different totals) hold exactly the stream's totals, computed by
// the test without engine code.
func TestGroupInstances(t *testing.T) {
	chAddr := clickHouseAddr(t)
	brokers := startKafka(t, 6)
	bin := buildBinary(t)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	s := makeStream(51, 18000, base)
	database := testDatabase(t)
	dir := t.TempDir()
	plan, _ := filepath.Abs("demo_plan.yaml")
	config := func(name string) string {
		path := filepath.Join(dir, name+".yaml")
		err := os.WriteFile(path, []byte(fmt.Sprintf(`
plan: %s
stateDir: %s
httpAddr: 127.0.0.1:0
scaleOut: group
kafka:
  brokers: [%s]
  group: billing
clickhouse:
  addr: %s
  database: %s
checkpointInterval: 100ms
emitOpenEvery: 200ms
sinkBatchRows: 500
idleTimeout: 2s
`, plan, filepath.Join(dir, "state-"+name), strings.Join(brokers, ", "), chAddr, database)), 0o644)
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
		allLogs[name+fmt.Sprint(len(allLogs))] = logs
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
	produce(t, brokers, "usage", s.msgs[2*third:])
	// One record an hour ahead, on one partition: every task's windows
	// close, whichever instance runs it (the group shares its tasks' time).
	closeAt := base.Add(time.Hour)
	produce(t, brokers, "usage", [][2]string{{"sub-000001", fmt.Sprintf(
		`{"id":"closer","customer":"sub-000001","meter":"sms","time":"%s","value":1,"dims":{"destination":"uk"}}`, closeAt.Format(time.RFC3339))}})
	s.expected[fmt.Sprintf("sms|sub-000001|destination=uk|%d", closeAt.Unix())] = total{quantity: decimal.NewFromInt(1), count: 1, amount: decimal.RequireFromString("0.05")}

	waitFor(t, 120*time.Second, "ClickHouse to hold the stream's totals", clickHouseMatches(t, chAddr, database, s.expected))
	waitFor(t, 60*time.Second, "every window before the last record to be final", func() string {
		rows, err := clickHouseTSV(chAddr, fmt.Sprintf("SELECT count() FROM %s.rated_usage FINAL WHERE final = 0 AND window_start < toDateTime(%d) FORMAT TSV",
			database, closeAt.Unix()), 1)
		if err != nil {
			return err.Error()
		}
		if rows[0][0] != "0" {
			return rows[0][0] + " rows still open"
		}
		return ""
	})
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}
	for name, in := range running {
		if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := in.cmd.Wait(); err != nil {
			t.Errorf("instance %s after SIGTERM: %v", name, err)
		}
		if strings.Contains(in.logs.String(), "panic:") {
			t.Errorf("instance %s panicked:\n%s", name, in.logs)
		}
	}
	checkDeadLetters(t, brokers, s)
	checkClickHouseDeadLetters(t, chAddr, database, s)
	for name, logs := range allLogs {
		t.Logf("instance %s: %d task starts, %d graceful stops, %d restores from the changelog", name,
			strings.Count(logs.String(), `msg="task started"`), strings.Count(logs.String(), "graceful=true"),
			strings.Count(logs.String(), "task restored from its changelog"))
	}
}
