package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
)

// TestRatedSinkWritesBatchesLargerThanAMessage: 10,000 rows with
// breakdowns (several MB) must reach a broker with the default 1 MB
// message.max.bytes.
func TestRatedSinkWritesBatchesLargerThanAMessage(t *testing.T) {
	brokers := cluster(t)
	sink, err := NewRatedSink(WriterConfig{ClientConfig: ClientConfig{Brokers: brokers}, Topic: "usage"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	rows := make([]engine.RatedRow, 10000)
	for i := range rows {
		q := decimal.NewFromInt(int64(i))
		rows[i] = engine.RatedRow{Tenant: "t", Meter: "data_bytes", Customer: fmt.Sprintf("sub-%06d", i), GroupKey: "rat=5G",
			WindowStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), Quantity: q, Amount: q, Currency: "EUR", Revision: 1,
			Breakdown: []rating.Line{{Description: "tier 1 " + strings.Repeat("x", 200), Units: q, UnitPrice: decimal.NewFromInt(1), Amount: q}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := sink.Write(ctx, rows); err != nil {
		t.Fatalf("write 10,000 rows: %.300v", err)
	}
}
