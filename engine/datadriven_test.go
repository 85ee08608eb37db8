package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/tally-billing/tally/rating"
	"gopkg.in/yaml.v3"
)

// TestDataDriven runs the files in testdata/engine: each is a sequence of
// commands against the real engine (see harness_test.go):
//
//	config partitions=2 shards=2 grace=10s revise-horizon=1h dedup-horizon=1h lateness=5s idle-timeout=30s date=2026-03-01
//	       anchor-day=15 timezone=UTC customer=id/Area/City/anchorDay
//	meters            (YAML list of meters as in the config file)
//	plan              (YAML price plan; default: every meter at 0.5 per unit)
//	catalog [default=ID]  (YAML plans: [...] with versions; subscriptions come as events)
//	start
//	records partition=N
//	  HH:MM:SS customer meter value [dim=value...] [id=X] [source=S]   (or a raw JSON record)
//	checkpoint [emit-open]   -> rows delivered for the first time, dead letters, duplicates
//	advance-clock 31s        (the wall clock, for idle partitions)
//	crash                    (stop at once, restart on the same state)
//	stop                     (graceful) -> rows of the final checkpoint
//	usage customer=C [meter=M] [from=T] [to=T] [window=W] [summary]  -> the live query API's answer
//	actions                  -> provisioning actions delivered for the first time (a re-delivery must be the same)
//	entitlements customer=C  -> the live entitlements (limit, used, state; grants and overage)
//	sla customer=C [period=YYYY-MM]        -> the live SLA report
//	statement customer=C [period=YYYY-MM]  -> the live statement, and the one built from the rows delivered
//
// Every file runs twice: with delta log bases at nearly every checkpoint
// (crossing bases, deltas and tombstones), and with none (where a change not
// marked dirty is lost at a crash instead of saved by a base).
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "../testdata/engine", func(t *testing.T, path string) {
		for _, mode := range []struct {
			name    string
			minBase int64
		}{{"bases", 1}, {"no-bases", 1 << 62}} {
			t.Run(mode.name, func(t *testing.T) { runEngineFile(t, path, mode.minBase) })
		}
	})
}

// runEngineFile runs one file of testdata/engine, with the delta log's
// smallest base at minBase bytes.
func runEngineFile(t *testing.T, path string, minBase int64) {
	{
		var h *harness
		date := "2026-03-01"
		partitions := 1
		var cfgArgs []datadriven.CmdArg
		var meters []Meter
		var plan *rating.Plan
		nextID := 0
		var lastDuplicates uint64
		breakdown := false
		var catalog *rating.Pricing
		actions := &captureActions{}
		actionCursor := 0
		seenActions := map[string]string{}
		output := func(rows []RatedRow, dead []DeadLetter) string {
			dups := h.engine.stats.duplicates.Load()
			delta := dups - lastDuplicates
			lastDuplicates = dups
			return formatRows(rows, dead, delta, breakdown)
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "config":
				for _, a := range d.CmdArgs {
					switch a.Key {
					case "partitions":
						partitions, _ = strconv.Atoi(a.Vals[0])
					case "date":
						date = a.Vals[0]
					default:
						cfgArgs = append(cfgArgs, a)
					}
				}
				return ""
			case "plan":
				p, err := rating.Parse([]byte(d.Input))
				if err != nil {
					d.Fatalf(t, "plan: %v", err)
				}
				plan = p
				return ""
			case "catalog":
				c, err := rating.ParseCatalog([]byte(d.Input))
				if err != nil {
					d.Fatalf(t, "catalog: %v", err)
				}
				subs, _ := rating.NewSubscriptions(nil, c)
				// Without default=ID, usage without a subscription is dead-lettered.
				defaultPlan := ""
				if d.HasArg("default") {
					d.ScanArgs(t, "default", &defaultPlan)
				}
				catalog = rating.NewPricing(c, subs, defaultPlan)
				return ""
			case "meters":
				if err := yaml.Unmarshal([]byte(d.Input), &meters); err != nil {
					d.Fatalf(t, "meters: %v", err)
				}
				return ""
			case "start":
				h = newHarness(t, partitions)
				h.cfg.DeltaBaseMinBytes = minBase
				h.cfg.ActionSinks = []ActionSink{actions}
				if plan != nil {
					h.rater = planRater{plan: plan}
				}
				if catalog != nil {
					h.rater = catalog
				}
				for _, a := range cfgArgs {
					if err := applyConfigArg(&h.cfg, a); err != nil {
						d.Fatalf(t, "%v", err)
					}
				}
				compiled, err := CompileMeters(meters, h.cfg.Window)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				h.meters = compiled
				h.start()
				return ""
			case "records":
				partition := 0
				if d.HasArg("partition") {
					d.ScanArgs(t, "partition", &partition)
				}
				var records [][]byte
				for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
					line = strings.TrimSpace(line)
					if line == "" || strings.HasPrefix(line, "#") {
						continue
					}
					if strings.HasPrefix(line, "{") {
						records = append(records, []byte(line))
						continue
					}
					nextID++
					rec, err := compactRecord(line, date, nextID)
					if err != nil {
						d.Fatalf(t, "%s: %v", line, err)
					}
					records = append(records, rec)
				}
				h.src.append(partition, records...)
				return ""
			case "checkpoint":
				breakdown = d.HasArg("breakdown")
				rows, dead := h.checkpoint(d.HasArg("emit-open"))
				return output(rows, dead)
			case "advance-clock":
				dur, err := time.ParseDuration(d.CmdArgs[0].Key)
				if err != nil {
					d.Fatalf(t, "%v", err)
				}
				h.advance(dur)
				return ""
			case "usage":
				req := UsageRequest{Windows: !d.HasArg("summary")}
				d.ScanArgs(t, "customer", &req.Customer)
				if d.HasArg("meter") {
					d.ScanArgs(t, "meter", &req.Meter)
				}
				if d.HasArg("window") {
					d.ScanArgs(t, "window", &req.Rollup)
				}
				for _, a := range d.CmdArgs {
					if a.Key == "from" || a.Key == "to" {
						at, err := time.Parse(time.RFC3339, a.Vals[0])
						if err != nil {
							d.Fatalf(t, "%v", err)
						}
						if a.Key == "from" {
							req.From = at
						} else {
							req.To = at
						}
					}
				}
				// Let the shards see everything fed so far first.
				h.checkpoint(false)
				h.fresh()
				u, err := h.engine.Usage(context.Background(), req)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				return formatUsage(u)
			case "crash":
				// crash key=value...: restart with the configuration
				// changed, as an operator would after a crash.
				for _, a := range d.CmdArgs {
					if err := applyConfigArg(&h.cfg, a); err != nil {
						d.Fatalf(t, "%v", err)
					}
				}
				h.crash()
				lastDuplicates = 0
				return ""
			case "stop":
				h.stop()
				return output(h.fresh())
			case "actions":
				actions.mu.Lock()
				fresh := actions.actions[actionCursor:]
				actionCursor = len(actions.actions)
				actions.mu.Unlock()
				var b strings.Builder
				for _, a := range fresh {
					body, _ := json.Marshal(a)
					if prev, ok := seenActions[a.ID]; ok {
						if prev != string(body) {
							t.Errorf("action %s delivered again with another body:\n%s\n%s", a.ID, prev, body)
						}
						continue
					}
					seenActions[a.ID] = string(body)
					fmt.Fprintf(&b, "%s %s used=%s limit=%s at=%s\n", a.ID, a.Action, a.Used, a.Limit, a.At.Format(time.RFC3339))
				}
				return b.String()
			case "entitlements":
				var customer string
				d.ScanArgs(t, "customer", &customer)
				h.checkpoint(false)
				h.fresh()
				e, err := h.engine.Entitlements(context.Background(), customer)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				var b strings.Builder
				for _, r := range e.Entitlements {
					fmt.Fprintf(&b, "%s %s of %s: used %s remaining %s %s", r.Meter, r.Plan, r.Of, r.Used, r.Remaining, r.State)
					if r.Of.Grants() {
						fmt.Fprintf(&b, " limit %s overage %s", r.Limit, r.Overage)
						for _, g := range r.Grants {
							fmt.Fprintf(&b, "; grant %s %s left of %s", g.ID, g.Remaining, g.Granted)
						}
					} else {
						fmt.Fprintf(&b, " limit %s", r.Limit)
					}
					b.WriteString("\n")
				}
				return b.String()
			case "sla", "statement":
				var customer, period string
				d.ScanArgs(t, "customer", &customer)
				var month time.Time
				if d.HasArg("period") {
					d.ScanArgs(t, "period", &period)
					var err error
					if month, err = time.Parse("2006-01", period); err != nil {
						d.Fatalf(t, "%v", err)
					}
				}
				h.checkpoint(false)
				h.fresh()
				if d.Cmd == "sla" {
					r, err := h.engine.SLA(context.Background(), customer, month)
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					var b strings.Builder
					fmt.Fprintf(&b, "%s %s..%s closed=%v\n", r.Plan, r.PeriodStart.Format(time.RFC3339), r.PeriodEnd.Format(time.RFC3339), r.Closed)
					for _, o := range r.Objectives {
						fmt.Fprintf(&b, "%s %s measured %s %s (%d samples) target %s: credit %s%% = %s\n", o.Name, o.State, o.Measured, o.Unit, o.Samples, o.Target, o.CreditPercent, o.Credit)
					}
					return b.String()
				}
				live, err := h.engine.Statement(context.Background(), customer, month)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				var rows []RatedRow
				for _, r := range h.final() {
					rows = append(rows, r)
				}
				fromRows, err := BuildStatement(customer, live.PeriodStart, live.PeriodEnd, rows, nil)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				var b strings.Builder
				for _, st := range []struct {
					name string
					s    Statement
				}{{"live", live}, {"rows", fromRows}} {
					fmt.Fprintf(&b, "%s: total %s %s final=%v\n", st.name, st.s.Total, st.s.Currency, st.s.Final)
					for _, l := range st.s.Lines {
						fmt.Fprintf(&b, "  %s %s %s: %s\n", l.Kind, l.Meter, l.Amount, l.Explanation)
					}
				}
				return b.String()
			default:
				d.Fatalf(t, "unknown command %s", d.Cmd)
				return ""
			}
		})
		if h != nil {
			h.cancel()
			checkDeltas(t, h) // every file: the rows' deltas add up
		}
	}
}

func applyConfigArg(cfg *Config, a datadriven.CmdArg) error {
	durations := map[string]*time.Duration{
		"grace": &cfg.Grace, "revise-horizon": &cfg.ReviseHorizon, "dedup-horizon": &cfg.DedupHorizon,
		"lateness": &cfg.AllowedLateness, "idle-timeout": &cfg.IdleTimeout, "window": &cfg.Window,
		"finalize-after": &cfg.FinalizeAfter, "dedup-memory-horizon": &cfg.DedupMemoryHorizon,
	}
	if p, ok := durations[a.Key]; ok {
		d, err := time.ParseDuration(a.Vals[0])
		*p = d
		return err
	}
	if a.Key == "timezone" {
		cfg.Timezone = a.Vals[0]
		return nil
	}
	if a.Key == "customer" { // customer=id/zone/anchor
		parts := strings.Split(a.Vals[0], "/")
		c := Customer{ID: parts[0]}
		if len(parts) > 2 {
			c.Timezone = strings.Join(parts[1:len(parts)-1], "/")
			n, err := strconv.Atoi(parts[len(parts)-1])
			if err != nil {
				return err
			}
			c.BillingAnchorDay = n
		}
		cfg.Customers = append(cfg.Customers, c)
		return nil
	}
	if a.Key == "anchor-day" {
		n, err := strconv.Atoi(a.Vals[0])
		cfg.BillingAnchorDay = n
		return err
	}
	if a.Key == "partitioner" {
		cfg.Partitioner = Partitioner(a.Vals[0])
		return nil
	}
	if a.Key == "shards" {
		n, err := strconv.Atoi(a.Vals[0])
		cfg.Shards = n
		return err
	}
	return fmt.Errorf("unknown config key %s", a.Key)
}

// compactRecord turns "HH:MM:SS customer meter value [k=v...] [id=X] [source=S]"
// into a plain JSON record; value "-" omits it; a time with a T is RFC 3339.
func compactRecord(line, date string, seq int) ([]byte, error) {
	f := strings.Fields(line)
	if len(f) < 4 {
		return nil, fmt.Errorf("want time customer meter value [dims] [id=] [source=]")
	}
	at := f[0]
	if !strings.Contains(at, "T") {
		at = date + "T" + at + "Z"
	}
	rec := map[string]any{"id": strconv.Itoa(seq), "customer": f[1], "meter": f[2], "time": at}
	if f[3] != "-" {
		rec["value"] = json.Number(f[3])
	}
	dims := map[string]string{}
	var source string
	for _, kv := range f[4:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		switch k {
		case "id":
			rec["id"] = v
		case "source":
			source = v
		default:
			dims[k] = v
		}
	}
	if source != "" {
		// A source is only carried by CloudEvents.
		data := map[string]any{}
		if v, ok := rec["value"]; ok {
			data["value"] = v
		}
		for k, v := range dims {
			data[k] = v
		}
		return json.Marshal(map[string]any{"specversion": "1.0", "id": rec["id"], "source": source, "type": f[2],
			"subject": f[1], "time": at, "data": data})
	}
	if len(dims) > 0 {
		rec["dims"] = dims
	}
	return json.Marshal(rec)
}

func formatUsage(u Usage) string {
	var b strings.Builder
	for _, w := range u.Windows {
		group := w.GroupKey
		if group == "" {
			group = "-"
		}
		state := "open"
		if w.Closed {
			state = "closed"
		}
		fmt.Fprintf(&b, "window %s %s %s..%s %s rev=%d quantity=%s count=%d\n", w.Meter, group,
			w.WindowStart.Format(time.RFC3339), w.WindowEnd.Format(time.RFC3339), state, w.Revision, w.Quantity, w.Count)
	}
	for _, p := range u.Periods {
		fmt.Fprintf(&b, "period %s %s..%s quantity=%s count=%d amount=%s %s\n", p.Meter,
			p.PeriodStart.Format(time.RFC3339), p.PeriodEnd.Format(time.RFC3339), p.Quantity, p.Count, p.Amount, p.Currency)
	}
	if b.Len() == 0 {
		return "(nothing)\n"
	}
	return b.String()
}
