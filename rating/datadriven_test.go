package rating

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"github.com/shopspring/decimal"
)

// TestDataDriven runs testdata/rating: one file per pricing model.
//
//	plan                 (YAML plan)  -> ok, or the validation error
//	charge meter=M       (one period-to-date quantity per line) -> amount and explanation
//	increments meter=M   (one window's usage per line) -> each window's charge,
//	                     then the sum of the window charges and the charge of the total
//	events meter=M       (one event per line: RFC 3339 time, units, dims k=v)
//	                     -> each event's rate and charge, each as a window of
//	                     its own with its explanation, then the sum of the
//	                     window charges and the rounded period total
func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "../testdata/rating", func(t *testing.T, path string) {
		var plan *Plan
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			switch d.Cmd {
			case "plan":
				p, err := Parse([]byte(d.Input))
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				plan = p
				return "ok\n"
			case "charge":
				var meter string
				d.ScanArgs(t, "meter", &meter)
				var b strings.Builder
				for _, line := range lines(d.Input) {
					c, err := plan.Rate(meter, decimal.RequireFromString(line))
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					fmt.Fprintf(&b, "%s -> %s %s\n", line, c.Amount, c.Currency)
					for _, l := range c.Lines {
						fmt.Fprintf(&b, "  %s: %s x %s = %s\n", l.Description, l.Units, l.UnitPrice, l.Amount)
					}
				}
				return b.String()
			case "increments":
				var meter string
				d.ScanArgs(t, "meter", &meter)
				var b strings.Builder
				ptd, sum := decimal.Zero, decimal.Zero
				for _, line := range lines(d.Input) {
					after := ptd.Add(decimal.RequireFromString(line))
					c, err := plan.Increment(meter, ptd, after)
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					fmt.Fprintf(&b, "%s (period to date %s) -> %s\n", line, after, c.Amount)
					ptd, sum = after, sum.Add(c.Amount)
				}
				total, _ := plan.Rate(meter, ptd)
				fmt.Fprintf(&b, "sum of windows %s, charge of the total %s\n", sum, total.Amount)
				if !sum.Equal(total.Amount) {
					t.Errorf("%s: window charges add up to %s, the total is charged %s", d.Pos, sum, total.Amount)
				}
				return b.String()
			case "events":
				var meter string
				d.ScanArgs(t, "meter", &meter)
				var b strings.Builder
				ptd, sum := decimal.Zero, decimal.Zero
				for _, line := range lines(d.Input) {
					f := strings.Fields(line)
					at, err := time.Parse(time.RFC3339, f[0])
					if err != nil {
						d.Fatalf(t, "%s: %v", line, err)
					}
					dims := make(map[string]string)
					for _, kv := range f[2:] {
						k, v, _ := strings.Cut(kv, "=")
						dims[k] = v
					}
					units := decimal.RequireFromString(f[1])
					ec, err := plan.RateEvent(meter, units, at, func(k string) (string, bool) { v, ok := dims[k]; return v, ok })
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					after := ptd.Add(ec.Amount)
					c, err := plan.IncrementEvents(meter, WindowUsage{Rate: ec.Rate, Units: units, Events: 1, Amount: ec.Amount}, ptd, after)
					if err != nil {
						return "error: " + err.Error() + "\n"
					}
					fmt.Fprintf(&b, "%s -> rate %q, event %s, window %s %s\n", line, ec.Rate, ec.Amount, c.Amount, c.Currency)
					for _, l := range c.Lines {
						fmt.Fprintf(&b, "  %s: %s x %s = %s\n", l.Description, l.Units, l.UnitPrice, l.Amount)
					}
					ptd, sum = after, sum.Add(c.Amount)
				}
				total := plan.round(ptd)
				fmt.Fprintf(&b, "sum of windows %s, rounded period total %s\n", sum, total)
				if !sum.Equal(total) {
					t.Errorf("%s: window charges add up to %s, the period total is %s", d.Pos, sum, total)
				}
				return b.String()
			default:
				d.Fatalf(t, "unknown command %s", d.Cmd)
				return ""
			}
		})
	})
}

func lines(input string) []string {
	var out []string
	for _, l := range strings.Split(input, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}
