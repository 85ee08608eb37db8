package main

// Tests of the real binary: `tally run --config FILE` against kfake, killed
// with SIGKILL mid-run, restarted, and stopped with SIGTERM.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tally-billing/tally/engine"
	"github.com/twmb/franz-go/pkg/kadm"
)

// buildBinary compiles cmd/tally once per test binary.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tally")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startBinary(t *testing.T, bin string, args ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, &logs
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// jsonlTotals keeps the highest revision per identity of a JSON-lines file.
func jsonlTotals(path string) (map[string]total, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	best := make(map[string]engine.RatedRow)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r engine.RatedRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("line %q: %w", sc.Text(), err)
		}
		id := r.Identity()
		if prev, ok := best[id]; ok && prev.Revision == r.Revision && !prev.Quantity.Equal(r.Quantity) {
			return nil, fmt.Errorf("revision %d of %s written twice with different totals", r.Revision, id)
		}
		if prev, ok := best[id]; !ok || r.Revision > prev.Revision {
			best[id] = r
		}
	}
	totals := make(map[string]total)
	for _, r := range best {
		key := fmt.Sprintf("%s|%s|%s|%d", r.Meter, r.Customer, r.GroupKey, r.WindowStart.Unix())
		totals[key] = total{quantity: r.Quantity, count: int64(r.Count), amount: r.Amount}
	}
	return totals, sc.Err()
}

func TestBinarySurvivesSIGKILLAndStopsOnSIGTERM(t *testing.T) {
	brokers := startKafka(t, 3)
	bin := buildBinary(t)
	s := makeStream(5, 30000, time.Date(2026, 11, 3, 0, 0, 0, 0, time.UTC))
	produce(t, brokers, "usage", s.msgs)

	dir := t.TempDir()
	plan, _ := filepath.Abs("demo_plan.yaml")
	output := filepath.Join(dir, "rated.jsonl")
	httpAddr := freeAddr(t)
	config := filepath.Join(dir, "tally.yaml")
	err := os.WriteFile(config, []byte(fmt.Sprintf(`
plan: %s
stateDir: %s
httpAddr: %s
outputFile: %s
kafka:
  brokers: [%s]
checkpointInterval: 100ms
emitOpenEvery: 200ms
sinkBatchRows: 300
`, plan, filepath.Join(dir, "state"), httpAddr, output, strings.Join(brokers, ", "))), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	// Run 1: killed with SIGKILL once it has consumed something.
	cmd, _ := startBinary(t, bin, "run", "--config", config)
	waitFor(t, 30*time.Second, "records consumed", func() string {
		_, body, err := httpGet("http://" + httpAddr + "/metrics")
		if err != nil {
			return err.Error()
		}
		if !regexp.MustCompile(`\ntally_records_consumed_total(\{task="\d+"\})? [1-9]`).MatchString(body) {
			return "nothing consumed yet"
		}
		return ""
	})
	// A single instance is a group of one (scaleOut unset).
	adm := adminClient(t, brokers)
	if g := describeGroup(t, adm, "tally-default"); len(g.Members) != 1 {
		t.Fatalf("group tally-default before the kill: %d members, want one", len(g.Members))
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// Run 2: on the same state, until every total is in the output file.
	// Its tasks come back once the killed member's session expires.
	cmd, logs := startBinary(t, bin, "run", "--config", config)
	waitFor(t, 90*time.Second, "the output file to hold the expected totals", func() string {
		got, err := jsonlTotals(output)
		if err != nil {
			return err.Error()
		}
		return diff(s.expected, got)
	})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/nope": 404} {
		code, body, err := httpGet("http://" + httpAddr + path)
		if err != nil || code != want {
			t.Errorf("GET %s = %d %q, %v; want %d", path, code, body, err, want)
		}
	}
	_, metrics, _ := httpGet("http://" + httpAddr + "/metrics")
	for _, name := range []string{"tally_records_consumed_total", "tally_records_decoded_total", "tally_dead_letters_total{reason=",
		"tally_duplicates_total{meter=", "tally_windows_emitted_total", "tally_checkpoint_duration_seconds_bucket",
		"tally_sink_batch_duration_seconds_bucket", "tally_consumer_lag_records{partition=\"0\",task=\"0\",topic=\"usage\"}",
		"\ngo_gc_gogc_percent 300\n", "\ngo_gc_gomemlimit_bytes "} { // the memory policy's defaults applied
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
	// A second process on the same state folder is refused, naming it,
	// before it joins the group (where it would take a share of the tasks
	// from the first and fail on their locked folders).
	member := describeGroup(t, adm, "tally-default").Members[0].MemberID
	out, err := exec.Command(bin, "run", "--config", config, "--http-addr", freeAddr(t)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another process") {
		t.Errorf("a second tally run on the same stateDir: exit %v, output %q; want a refusal", err, out)
	}
	if g := describeGroup(t, adm, "tally-default"); len(g.Members) != 1 || g.Members[0].MemberID != member {
		t.Errorf("the refused process joined the group: %+v, want only member %s", g.Members, member)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tally run after SIGTERM: %v\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("tally run did not stop within 30s of SIGTERM\n%s", logs)
	}
	// Stopped, the member left: its tasks would move at once.
	if g := describeGroup(t, adm, "tally-default"); len(g.Members) != 0 {
		t.Errorf("group tally-default after SIGTERM: %d members, want none (the instance leaves)", len(g.Members))
	}
	checkDeadLetters(t, brokers, s)
	if d := diff(s.expected, ratedTopicTotals(t, brokers)); d != "" {
		t.Errorf("rated topic differs: %s", d)
	}

	// A bad configuration fails at start naming the key.
	out, err = exec.Command(bin, "run", "--config", config, "--window", "7m").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "window") || !strings.Contains(string(out), "--window") {
		t.Errorf("bad window: exit %v, output %q; want a failure naming window and --window", err, out)
	}
}

func TestDemoRunsAndStops(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	output := filepath.Join(dir, "rated.jsonl")
	out, err := exec.Command(bin, "demo", "--duration", "4s", "--rate", "2000", "--report-every", "1s",
		"--window", "1s", "--output", output, "--http-addr", freeAddr(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("tally demo: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "rec/s") || !strings.Contains(string(out), "tally demo: stopped:") {
		t.Errorf("demo output lacks the live line or the final summary:\n%s", out)
	}
	got, err := jsonlTotals(output)
	if err != nil || len(got) == 0 {
		t.Errorf("demo wrote no rated rows to %s: %v", output, err)
	}
}

// describeGroup describes a consumer group.
func describeGroup(t *testing.T, adm *kadm.Client, group string) kadm.DescribedGroup {
	t.Helper()
	groups, err := adm.DescribeGroups(context.Background(), group)
	if err != nil {
		t.Fatal(err)
	}
	g, ok := groups[group]
	if !ok || g.Err != nil {
		t.Fatalf("describe group %s: %v", group, g.Err)
	}
	return g
}
