package clickhouse

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/rating"
)

func testAddr(t testing.TB) string {
	addr := os.Getenv("TALLY_TEST_CLICKHOUSE")
	if addr == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("TALLY_TEST_CLICKHOUSE is not set: ClickHouse did not start (make test starts it)")
		}
		t.Skip("TALLY_TEST_CLICKHOUSE not set; run make test")
	}
	return addr
}

func query(t *testing.T, addr, q string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("clickhouse-client", "--host", host, "--port", port, "--query", q).CombinedOutput()
	if err != nil {
		t.Fatalf("clickhouse-client %q: %v\n%s", q, err, out)
	}
	return strings.TrimSpace(string(out))
}

func row(customer string, revision uint64, quantity string) engine.RatedRow {
	start := time.Date(2026, 2, 28, 23, 59, 0, 0, time.UTC)
	q := decimal.RequireFromString(quantity)
	return engine.RatedRow{Tenant: "t", Meter: "sms", Customer: customer, GroupKey: "destination=uk",
		WindowStart: start, WindowEnd: start.Add(time.Minute), Quantity: q, Count: 3,
		Amount: q.Mul(decimal.RequireFromString("0.0000001")), Currency: "EUR",
		UnitPrice: decimal.RequireFromString("0.0000001"), Revision: revision, Final: revision > 1}
}

func TestSinkCollapsesRevisionsAndRedeliveries(t *testing.T) {
	addr := testAddr(t)
	ctx := context.Background()
	database := fmt.Sprintf("tally_sink_test_%d", time.Now().UnixNano()%1e9)
	sink, err := Open(ctx, Config{Addr: addr, Database: database})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	// No DROP DATABASE at the end: ClickHouse 18.16 races concurrent DDL
	// (other test packages create databases meanwhile), and the test
	// server's data folder is temporary.
	// Opening again is harmless: tables are created only if absent.
	again, err := Open(ctx, Config{Addr: addr, Database: database})
	if err != nil {
		t.Fatalf("second Open: %v", err)
	}
	again.Close()

	batches := [][]engine.RatedRow{
		{row("a", 1, "10"), row("b", 1, "1")},
		{row("a", 3, "12345678901234567890.0123456789")}, // revision 3 arrives before 2
		{row("a", 2, "11"), row("b", 1, "1")},            // b re-delivered after a crash
		{row("c", 1, "-2.5")},                            // negative adjustment
		{withBreakdown(row("d", 1, "3"))},
	}
	for _, b := range batches {
		if err := sink.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	got := query(t, addr, "SELECT customer, revision, toString(quantity), toString(amount), final, window_start FROM "+
		database+".rated_usage FINAL ORDER BY customer FORMAT TSV")
	want := "a\t3\t12345678901234567890.0123456789\t1234567890123.4567890012\t1\t2026-02-28 23:59:00\n" +
		"b\t1\t1.0000000000\t0.0000001000\t0\t2026-02-28 23:59:00\n" +
		"c\t1\t-2.5000000000\t-0.0000002500\t0\t2026-02-28 23:59:00\n" +
		"d\t1\t3.0000000000\t0.0000003000\t0\t2026-02-28 23:59:00"
	if got != want {
		t.Errorf("FINAL rows:\n%s\nwant:\n%s", got, want)
	}
	if got := query(t, addr, "SELECT breakdown FROM "+database+".rated_usage FINAL WHERE customer = 'd' FORMAT TSVRaw"); !strings.Contains(got, `"description":"tier 1","units":"3"`) {
		t.Errorf("breakdown %q lacks the tier line", got)
	}
}

func withBreakdown(r engine.RatedRow) engine.RatedRow {
	r.Breakdown = []rating.Line{{Description: "tier 1", Units: r.Quantity, UnitPrice: r.UnitPrice, Amount: r.Amount}}
	return r
}

// TestOpenAddsColumnsToOlderTables: a rated_usage table created before the
// breakdown column existed gets it when the sink opens.
func TestOpenAddsColumnsToOlderTables(t *testing.T) {
	addr := testAddr(t)
	database := fmt.Sprintf("tally_old_table_%d", time.Now().UnixNano()%1e9)
	old := TableDDL(database, "rated_usage")
	for _, col := range []string{"    breakdown    String,\n", "    plan           String,\n", "    quantity_delta Decimal(38, 10),\n",
		"    amount_delta   Decimal(38, 10),\n", "    sign           Int8,\n"} {
		old = strings.Replace(old, col, "", 1)
	}
	if old == TableDDL(database, "rated_usage") {
		t.Fatal("could not derive the older DDL")
	}
	query(t, addr, "CREATE DATABASE IF NOT EXISTS "+database)
	query(t, addr, old)
	sink, err := Open(context.Background(), Config{Addr: addr, Database: database})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r := withBreakdown(row("e", 1, "1"))
	r.Plan, r.QuantityDelta, r.AmountDelta, r.Sign = "gold", r.Quantity, r.Amount, 1
	if err := sink.Write(context.Background(), []engine.RatedRow{r}); err != nil {
		t.Fatalf("write to an upgraded table: %v", err)
	}
	if got := query(t, addr, "SELECT count() FROM "+database+".rated_usage WHERE breakdown != ''"); got != "1" {
		t.Errorf("rows with a breakdown: %s, want 1", got)
	}
	if got := query(t, addr, "SELECT plan, toString(quantity_delta), toString(amount_delta), sign FROM "+database+".rated_usage FORMAT TSV"); got != "gold\t1.0000000000\t0.0000001000\t1" {
		t.Errorf("plan, deltas and sign: %q", got)
	}
}

func TestOpenRejectsBadIdentifiers(t *testing.T) {
	if _, err := Open(context.Background(), Config{Addr: "127.0.0.1:1", Database: "x; DROP"}); err == nil ||
		!strings.Contains(err.Error(), "clickhouse.database") {
		t.Errorf("Open with a bad database name: %v", err)
	}
}

// TestWriteInBlocks: a batch larger than a block arrives whole, each row
// with its own values and breakdown, in blocks whose arrays are reused
// (a row of an earlier block must not show through in a later one), and as
// one part: the server squashes the blocks of one INSERT.
func TestWriteInBlocks(t *testing.T) {
	addr := testAddr(t)
	ctx := context.Background()
	database := fmt.Sprintf("tally_blocks_test_%d", time.Now().UnixNano()%1e9)
	sink, err := Open(ctx, Config{Addr: addr, Database: database})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	n := 2*blockRows + 77
	rows := make([]engine.RatedRow, n)
	var sum int64
	for i := range rows {
		rows[i] = row(fmt.Sprintf("c%05d", i), uint64(i%3+1), fmt.Sprint(i))
		if i%2 == 0 { // breakdowns of different lengths, and none
			rows[i] = withBreakdown(rows[i])
		}
		sum += int64(i)
	}
	query(t, addr, "SYSTEM STOP MERGES")
	defer query(t, addr, "SYSTEM START MERGES")
	if err := sink.Write(ctx, rows); err != nil {
		t.Fatal(err)
	}
	table := database + ".rated_usage"
	if got, want := query(t, addr, "SELECT count(), toString(sum(quantity)) FROM "+table), fmt.Sprintf("%d\t%d.0000000000", n, sum); got != want {
		t.Errorf("count, sum(quantity): %s, want %s", got, want)
	}
	// Every row's breakdown names its own units, or is empty.
	bad := query(t, addr, "SELECT count() FROM "+table+" WHERE if(toUInt64(substring(customer, 2)) % 2 = 0, toString(toUInt64(quantity)), '') != extract(breakdown, '\"units\":\"([0-9]+)\"')")
	if bad != "0" {
		t.Errorf("%s rows have another row's breakdown, or none where they should", bad)
	}
	if parts := query(t, addr, "SELECT count() FROM system.parts WHERE database = '"+database+"' AND table = 'rated_usage' AND active"); parts != "1" {
		t.Errorf("one INSERT left %s parts, want 1", parts)
	}
}

// TestWritesToAServerThatStopsReadingEnd: a write the server does not read
// fails after the timeout instead of waiting for TCP to give up (a batch's
// Flush has no other bound in the driver).
func TestWritesToAServerThatStopsReadingEnd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			time.Sleep(10 * time.Second) // accepts, never reads
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	c := deadlineConn{Conn: raw, timeout: 200 * time.Millisecond}
	done := make(chan error, 1)
	go func() {
		block := make([]byte, 1<<20)
		for range 256 { // far beyond the socket buffers
			if _, err := c.Write(block); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("writing 256 MB nobody reads: %v, want a deadline error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a write to a server that does not read still waits after 5 s")
	}
}
