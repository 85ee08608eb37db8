package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"os"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/tally-billing/tally/engine"
)

// runStatement is `tally statement`: it rates a JSON-lines file offline
// (as `tally rate` does) and prints one customer's statement for one
// billing period, as JSON or an HTML page, from the rows.
func runStatement(ctx context.Context, args []string, stdout, stderr io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("statement", flag.ContinueOnError)
	fs.SetOutput(stderr)
	plans := fs.String("plans", "", "price plan file (required)")
	input := fs.String("input", "", "usage events, one JSON per line; - for stdin (required)")
	config := fs.String("config", "", "tally configuration (meters, customers, time rules); Kafka and ClickHouse keys are ignored")
	subscriptions := fs.String("subscriptions", "", "subscriptions, a YAML or JSON list of {customer, plan, start, end}")
	customer := fs.String("customer", "", "the customer (required)")
	period := fs.String("period", "", "the billing period, by the month it starts in: YYYY-MM (required)")
	format := fs.String("format", "json", "json or html")
	untilText := fs.String("until", "", "RFC 3339 time taken as the watermark at the end of the input (default: when the period settles for every meter, so it closes and its fees and credits are on the statement)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *plans == "" || *input == "" || *customer == "" || *period == "" {
		return errors.New("statement: --plans, --input, --customer and --period are required, e.g. tally statement --plans plan.yaml --input usage.jsonl --customer sub-000042 --period 2026-11")
	}
	month, err := time.Parse("2006-01", *period)
	if err != nil {
		return fmt.Errorf("statement: --period %q is not a month such as 2026-11", *period)
	}
	if *format != "json" && *format != "html" {
		return fmt.Errorf("statement: --format %q is neither json nor html", *format)
	}
	cfgArgs := []string{"--plan", *plans}
	if *config != "" {
		cfgArgs = append([]string{"--config", *config}, cfgArgs...)
	}
	cfg, err := loadConfig("statement", cfgArgs, false)
	if err != nil {
		return err
	}
	if *subscriptions != "" {
		data, err := os.ReadFile(*subscriptions)
		if err != nil {
			return fmt.Errorf("statement: --subscriptions: %w", err)
		}
		cfg.Subscriptions = nil
		if err := yaml.Unmarshal(data, &cfg.Subscriptions); err != nil {
			return fmt.Errorf("statement: --subscriptions %s: %w (want a list of {customer, plan, start, end})", *subscriptions, err)
		}
	}
	_, meters, err := loadPlans(cfg)
	if err != nil {
		return err
	}
	start, end, settle, err := engine.BillingPeriodOf(cfg.engineConfig(), meters, *customer, month)
	if err != nil {
		return fmt.Errorf("statement: %w", err)
	}
	until := settle
	if *untilText != "" {
		if until, err = time.Parse(time.RFC3339, *untilText); err != nil {
			return fmt.Errorf("statement: --until %q is not an RFC 3339 time such as 2026-12-01T00:00:00Z", *untilText)
		}
	}
	res, err := rateFile(ctx, cfg, *input, rateOptions{until: until}, log)
	if err != nil {
		return err
	}
	for _, l := range res.letters {
		fmt.Fprintf(stderr, "line %d: %s: %s\n", l.Offset+1, l.Reason, l.Detail)
	}
	unit := func(meter string) string {
		for _, m := range cfg.Meters {
			if m.Name == meter {
				return m.Unit
			}
		}
		return ""
	}
	st, err := engine.BuildStatement(*customer, start, end, res.rows, unit)
	if err != nil {
		return fmt.Errorf("statement: %w", err)
	}
	st.Final = st.Final && !until.Before(settle) // a watermark short of the settle end leaves a preview
	return writeStatement(stdout, st, *format)
}

// writeStatement writes st as JSON or as an HTML page.
func writeStatement(w io.Writer, st engine.Statement, format string) error {
	if format == "html" {
		return statementPage.Execute(w, st)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(st)
}

// statementPage is a statement as a page a customer can read: every line
// with its explanation and breakdown, and the total.
var statementPage = template.Must(template.New("statement").Funcs(template.FuncMap{
	"date": func(t time.Time) string { return t.Format("2 January 2006") },
	"last": func(t time.Time) string { return t.Add(-time.Nanosecond).Format("2 January 2006") },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Statement {{.Customer}} {{date .PeriodStart}}</title>
<style>
body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;width:100%}td,th{padding:.35rem .5rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.detail td{color:#555;font-size:.9em;border-bottom:none}
tr.total td{font-weight:bold;border-top:2px solid #222}.preview{color:#a50}
</style></head>
<body>
<h1>Statement for {{.Customer}}</h1>
<p>Billing period {{date .PeriodStart}} to {{last .PeriodEnd}}, in {{.Currency}}.{{if not .Final}} <span class="preview">Preview: the period is still open, and these amounts may change.</span>{{end}}</p>
<table id="lines">
<tr><th>Item</th><th>What it is</th><th class="n">Quantity</th><th class="n">Amount</th></tr>
{{range .Lines}}<tr class="line {{.Kind}}"><td>{{.Kind}}: {{.Meter}}{{if .Objective}} ({{.Objective}}){{end}}</td><td>{{.Explanation}}</td><td class="n">{{.Quantity}}</td><td class="n amount">{{.Amount}}</td></tr>
{{range .Breakdown}}<tr class="detail"><td></td><td>{{.Description}}{{if not .UnitPrice.IsZero}} at {{.UnitPrice}}{{end}}</td><td class="n">{{.Units}}</td><td class="n">{{.Amount}}</td></tr>
{{end}}{{range .Groups}}<tr class="detail"><td></td><td>{{.GroupKey}}</td><td class="n">{{.Quantity}}</td><td class="n">{{.Amount}}</td></tr>
{{end}}{{end}}<tr class="total"><td>Total</td><td>{{.Rows}} rated rows</td><td></td><td class="n" id="total">{{.Total}} {{.Currency}}</td></tr>
</table>
</body></html>
`))
