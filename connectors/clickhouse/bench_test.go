package clickhouse

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tally-billing/tally/engine"
)

// BenchmarkWrite inserts batches of 10,000 and 50,000 rated rows (with a
// breakdown) into ClickHouse over the native protocol, as the sink does.
func BenchmarkWrite(b *testing.B) {
	for _, n := range []int{10_000, 50_000} {
		b.Run(fmt.Sprint("rows=", n), func(b *testing.B) { benchmarkWrite(b, n) })
	}
}

func benchmarkWrite(b *testing.B, n int) {
	addr := testAddr(b)
	ctx := context.Background()
	s, err := Open(ctx, Config{Addr: addr, Database: fmt.Sprintf("tally_bench_%d", time.Now().UnixNano()%1e9)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rows := make([]engine.RatedRow, n)
	for i := range rows {
		rows[i] = withBreakdown(row(fmt.Sprintf("sub-%07d", i), 1, "12345.5"))
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Write(ctx, rows); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(rows)*b.N)/b.Elapsed().Seconds(), "rows/s")
}
