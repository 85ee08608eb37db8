package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/tally-billing/tally/engine"
)

// deployDir is the repository's deploy folder.
var deployDir = filepath.Join("..", "..", "deploy")

// TestPrometheusRules checks deploy/prometheus with Prometheus's own
// promtool (Debian's prometheus package): the alert and recording rules
// parse, their unit tests pass (each alert fires on the series that should
// raise it, not before its `for`, nor on the others), and every Tally
// metric they read is one Tally exports.
func TestPrometheusRules(t *testing.T) {
	promtool := requireToolOf(t, "promtool", "prometheus")
	dir := filepath.Join(deployDir, "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml", "rules.yml"},
		{"test", "rules", "alerts_test.yml", "rules_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	exported := exportedMetrics(t)
	for _, name := range []string{"alerts.yml", "rules.yml"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricNames(string(b)) {
			if !exported[m] {
				t.Errorf("%s reads %s, which Tally does not export", name, m)
			}
		}
	}
}

// exportedMetrics names every series Tally's /metrics can hold: the
// engine's metrics (histograms with their _bucket, _sum and _count), the
// Go and process collectors' (wire.go), and Prometheus's own up.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	rec := &descRecorder{names: map[string]bool{"up": true}}
	engine.NewMetrics(rec)
	rec.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if len(rec.names) < 20 {
		t.Fatalf("only %d metrics recorded: %v", len(rec.names), rec.names)
	}
	return rec.names
}

// descRecorder is a prometheus.Registerer that records the names of what
// is registered.
type descRecorder struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *descRecorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			continue
		}
		r.names[m[1]] = true
		switch c.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec:
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				r.names[m[1]+suffix] = true
			}
		}
	}
	return nil
}

func (r *descRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *descRecorder) Unregister(prometheus.Collector) bool { return true }

// metricNames lists the metric names a PromQL text reads: Tally's
// (tally_...) and up, not recording rules' (tally:...).
func metricNames(text string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(^|[^a-z_:])(tally_[a-z0-9_]+|up)\b`).FindAllStringSubmatch(text, -1) {
		out = append(out, m[2])
	}
	return out
}
