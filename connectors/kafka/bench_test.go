package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
)

// BenchmarkRatedSinkWrite produces batches of 10,000 rated rows (with a
// one-line breakdown, as a tiered plan writes) to an in-process kfake, as
// the sink does: JSON encoding, keys, headers, ProduceSync.
func BenchmarkRatedSinkWrite(b *testing.B) {
	sink, err := NewRatedSink(WriterConfig{ClientConfig: ClientConfig{Brokers: cluster(b)}, Topic: "usage"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	rows := make([]engine.RatedRow, 10_000)
	for i := range rows {
		q := decimal.New(int64(i)*1234, -3)
		rows[i] = engine.RatedRow{Tenant: "default", Meter: "voice_seconds", Customer: fmt.Sprintf("sub-%07d", i), GroupKey: "destination=uk",
			WindowStart: time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC), WindowEnd: time.Date(2026, 3, 1, 10, 1, 0, 0, time.UTC),
			Quantity: q, Count: 3, Amount: q.Shift(-2), Currency: "EUR", UnitPrice: decimal.New(1, -2), Revision: 2, Final: true,
			Breakdown: []rating.Line{{Description: "tier 1", Units: q, UnitPrice: decimal.New(1, -2), Amount: q.Shift(-2)}}}
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := sink.Write(ctx, rows); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(rows)*b.N)/b.Elapsed().Seconds(), "rows/s")
}
