package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/connectors/clickhouse"
	"github.com/tally-billing/tally/engine"
	"gopkg.in/yaml.v3"
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

// grafanaDashboard is what TestGrafanaDashboards reads of a dashboard.
type grafanaDashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID      int    `json:"id"`
		Title   string `json:"title"`
		Type    string `json:"type"`
		GridPos struct {
			X, Y, W, H int
		} `json:"gridPos"`
		Datasource grafanaRef `json:"datasource"`
		Targets    []struct {
			RefID      string     `json:"refId"`
			Expr       string     `json:"expr"`
			RawSQL     string     `json:"rawSql"`
			Datasource grafanaRef `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

type grafanaRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// TestGrafanaDashboards checks deploy/grafana: the dashboards are well
// formed for Grafana (ids, grid, datasources the provisioning file
// defines, template variables defined), every PromQL query parses
// (promtool, as recording rules) and reads only metrics Tally exports or
// the recording rules of deploy/prometheus, and every SQL query runs on
// the test ClickHouse against the tables Tally creates, holding rows the
// sink wrote, and returns some.
func TestGrafanaDashboards(t *testing.T) {
	dir := filepath.Join(deployDir, "grafana")
	var provisioned struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
		} `yaml:"datasources"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "provisioning", "datasources", "tally.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &provisioned); err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for _, d := range provisioned.Datasources {
		types[d.UID] = d.Type
	}
	recorded := map[string]bool{}
	rules, err := os.ReadFile(filepath.Join(deployDir, "prometheus", "rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`record: (\S+)`).FindAllStringSubmatch(string(rules), -1) {
		recorded[m[1]] = true
	}
	exported := exportedMetrics(t)
	var promql, sql []string
	files, _ := filepath.Glob(filepath.Join(dir, "dashboards", "*.json"))
	if len(files) < 2 {
		t.Fatalf("dashboards: %v, want the operations and the business one", files)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d grafanaDashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		name := filepath.Base(f)
		if d.UID == "" || d.Title == "" || d.SchemaVersion < 30 || len(d.Panels) == 0 {
			t.Errorf("%s: uid %q, title %q, schemaVersion %d, %d panels", name, d.UID, d.Title, d.SchemaVersion, len(d.Panels))
		}
		vars := map[string]bool{}
		for _, v := range d.Templating.List {
			vars[v.Name] = true
		}
		ids := map[int]bool{}
		for _, p := range d.Panels {
			at := fmt.Sprintf("%s panel %d %q", name, p.ID, p.Title)
			if ids[p.ID] || p.Title == "" || p.Type == "" {
				t.Errorf("%s: a repeated id, or no title or type", at)
			}
			ids[p.ID] = true
			if g := p.GridPos; g.W < 1 || g.H < 1 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s: gridPos %+v is outside Grafana's 24 columns", at, g)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no queries", at)
			}
			for _, q := range p.Targets {
				ds := cmp.Or(q.Datasource.UID, p.Datasource.UID)
				switch types[ds] {
				case "prometheus":
					if q.Expr == "" {
						t.Errorf("%s: a Prometheus query without expr", at)
					}
					for _, v := range regexp.MustCompile(`\$(\w+)`).FindAllStringSubmatch(q.Expr, -1) {
						if !strings.HasPrefix(v[1], "__") && !vars[v[1]] {
							t.Errorf("%s: $%s is no template variable of the dashboard", at, v[1])
						}
					}
					for _, m := range metricNames(q.Expr) {
						if !exported[m] {
							t.Errorf("%s reads %s, which Tally does not export", at, m)
						}
					}
					for _, m := range regexp.MustCompile(`tally:[a-z0-9_:]+`).FindAllString(q.Expr, -1) {
						if !recorded[m] {
							t.Errorf("%s reads %s, which no rule of deploy/prometheus/rules.yml records", at, m)
						}
					}
					promql = append(promql, q.Expr)
				case "grafana-clickhouse-datasource":
					if q.RawSQL == "" {
						t.Errorf("%s: a ClickHouse query without rawSql", at)
					}
					sql = append(sql, q.RawSQL)
				default:
					t.Errorf("%s: datasource %q is not one deploy/grafana/provisioning defines (%v)", at, ds, types)
				}
			}
		}
	}
	checkPromQL(t, promql)
	checkDashboardSQL(t, sql)
}

// checkPromQL parses exprs with promtool, as recording rules, Grafana's
// variables replaced by what they stand for.
func checkPromQL(t *testing.T, exprs []string) {
	t.Helper()
	promtool := requireToolOf(t, "promtool", "prometheus")
	var b strings.Builder
	b.WriteString("groups:\n  - name: grafana\n    rules:\n")
	vars := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*")
	for i, e := range exprs {
		q, _ := json.Marshal(vars.Replace(e))
		fmt.Fprintf(&b, "      - record: grafana_panel_%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "panels.yml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboards' queries: %v\n%s", err, out)
	}
}

// checkDashboardSQL runs each query on the test ClickHouse, in a database
// Tally's sink created and wrote a usage row, a fee row, a revised row, an
// SLA credit and a dead letter to; each must return rows.
func checkDashboardSQL(t *testing.T, queries []string) {
	t.Helper()
	addr := clickHouseAddr(t)
	client := requireTool(t, "clickhouse-client")
	database := testDatabase(t)
	ctx := context.Background()
	sink, err := clickhouse.Open(ctx, clickhouse.Config{Addr: addr, Database: database})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close() })
	at := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	row := func(group string, revision uint64, amount string) engine.RatedRow {
		return engine.RatedRow{Tenant: "default", Meter: "voice", Customer: "c1", GroupKey: group, WindowStart: at, WindowEnd: at.Add(time.Minute),
			Quantity: decimal.NewFromInt(60), Count: 1, Amount: decimal.RequireFromString(amount), Currency: "EUR", Revision: revision, Final: true}
	}
	if err := sink.Write(ctx, []engine.RatedRow{row("", 1, "0.6"), row("", 2, "0.9"), row("@period", 1, "10"), row("@sla:uptime", 1, "-1.09")}); err != nil {
		t.Fatal(err)
	}
	if err := sink.DeadLetters().WriteDeadLetters(ctx, []engine.DeadLetter{{Reason: engine.ReasonInvalidJSON, Detail: "not JSON", Topic: "usage", Partition: 0, Offset: 7, Raw: []byte("{")}}); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(addr)
	timeFilter := regexp.MustCompile(`\$__timeFilter\((\w+)\)`)
	for _, q := range queries {
		q := timeFilter.ReplaceAllString(q, fmt.Sprintf("$1 >= toDateTime(%d) AND $1 <= toDateTime(%d)", at.Add(-24*time.Hour).Unix(), time.Now().Add(time.Hour).Unix()))
		if strings.Contains(q, "$") {
			t.Errorf("a Grafana macro this test does not expand: %s", q)
			continue
		}
		out, err := exec.Command(client, "--host", host, "--port", port, "--database", database, "--query", q).CombinedOutput()
		if err != nil {
			t.Errorf("%s\n%v: %s", q, err, out)
			continue
		}
		if strings.TrimSpace(string(out)) == "" {
			t.Errorf("%s\nreturned no rows from the rows written", q)
		}
	}
}
