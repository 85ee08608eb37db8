package main

// The crash harness: the real binary against kfake and ClickHouse, killed
// with SIGKILL again and again (by itself, armed with TALLY_CRASH_FAULTS,
// during Pebble checkpoints, ClickHouse inserts and Kafka produces of rated
// rows, or from outside at random moments), restarted on the same state
// folder each time. Once the stream is drained, ClickHouse, the rated
// topic and an independent recomputation of the input must agree to the
// last decimal. make test runs it with 10 kills; make chaos with 100.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestChaosKills(t *testing.T) {
	chAddr := clickHouseAddr(t)
	kills := envInt("TALLY_CHAOS_KILLS", 10)
	records := envInt("TALLY_CHAOS_RECORDS", 20000)
	brokers := startKafka(t, 3)
	bin := buildBinary(t)
	s := makeStream(uint64(envInt("TALLY_CHAOS_SEED", 21)), records, time.Date(2026, 11, 10, 0, 0, 0, 0, time.UTC))
	database := testDatabase(t)

	dir := t.TempDir()
	plan, _ := filepath.Abs("demo_plan.yaml")
	config := filepath.Join(dir, "tally.yaml")
	err := os.WriteFile(config, []byte(fmt.Sprintf(`
plan: %s
stateDir: %s
httpAddr: 127.0.0.1:0
kafka:
  brokers: [%s]
  ratedTopic: rated-usage
clickhouse:
  addr: %s
  database: %s
checkpointInterval: 50ms
emitOpenEvery: 150ms
sinkBatchRows: 200
`, plan, filepath.Join(dir, "state"), strings.Join(brokers, ", "), chAddr, database)), 0o644)
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
		cmd := exec.Command(bin, "run", "--config", config)
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
	}
	if !produced {
		produce(t, brokers, "usage", s.msgs[half:])
	}

	// The last run, unharmed, drains the stream.
	cmd, logs := startBinary(t, bin, "run", "--config", config)
	waitFor(t, 120*time.Second, "ClickHouse and the rated topic to match the recomputation", func() string {
		got, err := clickHouseTotals(t, chAddr, database)
		if err != nil {
			return err.Error()
		}
		if d := diff(s.expected, got); d != "" {
			return "ClickHouse: " + d
		}
		if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
			return "rated topic: " + d
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
	t.Logf("chaos: %d records (%d duplicates, %d late, %d malformed: dead letters), %d windows; %d kills: %v; ClickHouse, rated topic and recomputation equal",
		len(s.msgs), s.dups, s.late, malformed, len(s.expected), kills, byPoint)
}
