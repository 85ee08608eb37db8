package rating

import (
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// BenchmarkIncrement prices one window increment per model, as the engine
// does at every emission.
func BenchmarkIncrement(b *testing.B) {
	for _, tt := range []struct{ model, price string }{
		{"per_unit", `{model: per_unit, unitPrice: "0.0004", freeAllowance: "100"}`},
		{"package", `{model: package, packageSize: "1000", packagePrice: "2"}`},
		{"graduated", `{model: graduated, tiers: [{upTo: "1000", unitPrice: "0.01"}, {upTo: "100000", unitPrice: "0.005", flatFee: "1"}, {unitPrice: "0.001"}]}`},
		{"volume", `{model: volume, tiers: [{upTo: "1000", unitPrice: "0.01"}, {unitPrice: "0.008"}]}`},
		{"percentage", `{model: percentage, percentage: "0.029"}`},
	} {
		b.Run(tt.model, func(b *testing.B) {
			plan, err := Parse([]byte("id: p\ncurrency: EUR\nmeters:\n  m: " + tt.price))
			if err != nil {
				b.Fatal(err)
			}
			ptd, step := decimal.NewFromInt(500), decimal.NewFromInt(37)
			b.ReportAllocs()
			for b.Loop() {
				after := ptd.Add(step)
				if _, err := plan.Increment("m", ptd, after); err != nil {
					b.Fatal(err)
				}
				ptd = after
			}
		})
	}
}

// BenchmarkRateEvent prices one event of each per-event model, as the
// engine does when it aggregates the event.
func BenchmarkRateEvent(b *testing.B) {
	for _, tt := range []struct{ model, price string }{
		{"event_fee", `{model: per_unit, unitPrice: "0.0004", eventFee: "0.03"}`},
		{"bands", `{model: per_unit, unitPrice: "0.01", bands: [{name: weekend, days: [sat, sun], unitPrice: "0.001"}, {name: peak, days: [mon, tue, wed, thu, fri], from: "08:00", to: "18:00", unitPrice: "0.02"}]}`},
		{"destinations", `{model: per_unit, unitPrice: "0.5", destinations: {dimension: called, prefixes: [{prefix: "44", name: UK, unitPrice: "0.05"}, {prefix: "4420", name: London, unitPrice: "0.03"}, {prefix: "1", name: NANP, unitPrice: "0.02"}]}}`},
		{"percentage_bounds", `{model: percentage, percentage: "0.029", eventFee: "0.3", minPerEvent: "0.5", maxPerEvent: "25"}`},
	} {
		b.Run(tt.model, func(b *testing.B) {
			plan, err := Parse([]byte("id: p\ncurrency: EUR\ntimezone: Europe/London\nmeters:\n  m: " + tt.price))
			if err != nil {
				b.Fatal(err)
			}
			at := time.Date(2026, 3, 2, 9, 30, 0, 0, time.UTC)
			units := decimal.NewFromInt(125)
			dim := func(string) (string, bool) { return "442071234567", true }
			b.ReportAllocs()
			for b.Loop() {
				if _, err := plan.RateEvent("m", units, at, dim); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
