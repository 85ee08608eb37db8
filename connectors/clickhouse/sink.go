// Package clickhouse writes rated usage to ClickHouse with clickhouse-go/v2
// over the native protocol. The table is a ReplacingMergeTree(revision)
// ordered by the row identity, so a row delivered twice (after a crash) or
// revised later collapses to its highest revision: query with FINAL or
// argMax(..., revision). The SQL runs on ClickHouse 18.16 and current
// releases.
package clickhouse

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"slices"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// Config configures the sink.
type Config struct {
	Addr     string // host:port of the native protocol, e.g. 127.0.0.1:9000
	Database string
	Table    string
	Username string
	Password string
	// Timeout bounds dialing and each query.
	Timeout time.Duration
}

var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Sink implements engine.Sink.
type Sink struct {
	cfg  Config
	conn driver.Conn
}

// Open connects and creates the database and table if absent.
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	if cfg.Database == "" {
		cfg.Database = "tally"
	}
	if cfg.Table == "" {
		cfg.Table = "rated_usage"
	}
	if cfg.Username == "" {
		cfg.Username = "default"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	for key, v := range map[string]string{"clickhouse.database": cfg.Database, "clickhouse.table": cfg.Table} {
		if !identifier.MatchString(v) {
			return nil, fmt.Errorf("%s: %q is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)", key, v)
		}
	}
	conn, err := ch.Open(&ch.Options{
		Addr:        []string{cfg.Addr},
		Auth:        ch.Auth{Database: "default", Username: cfg.Username, Password: cfg.Password},
		DialTimeout: cfg.Timeout,
		ReadTimeout: cfg.Timeout,
		// The driver bounds reads, and a Send by its context, but not the
		// writes of a batch's Flush: a server that stops reading would hold
		// a Write (and a stop) until TCP gives up, minutes later.
		DialContext: func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{Timeout: cfg.Timeout}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return deadlineConn{Conn: c, timeout: cfg.Timeout}, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse: open %s: %w", cfg.Addr, err)
	}
	s := &Sink{cfg: cfg, conn: conn}
	if err := s.createTables(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return s, nil
}

// DeadLettersTable is the table of dead letters, next to the rated usage.
const DeadLettersTable = "dead_letters"

// DeadLettersDDL returns the CREATE TABLE statement of the dead-letter
// table: one row per source record, collapsed on re-delivery by its
// position (query with FINAL).
func DeadLettersDDL(database string) string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.%s (
    topic        String,
    partition    Int32,
    offset       Int64,
    reason       String,
    detail       String,
    raw          String,
    inserted_at  DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(inserted_at)
ORDER BY (topic, partition, offset)`, database, DeadLettersTable)
}

// TableDDL returns the CREATE TABLE statement of the rated-usage table.
func TableDDL(database, table string) string {
	return fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s.%s (
    tenant       String,
    meter        String,
    customer     String,
    group_key    String,
    window_start DateTime('UTC'),
    window_end   DateTime('UTC'),
    quantity     Decimal(38, 10),
    event_count  UInt64,
    amount       Decimal(38, 10),
    currency     String,
    unit_price   Decimal(38, 10),
    revision     UInt64,
    final        UInt8,
    breakdown    String,
    plan           String,
    quantity_delta Decimal(38, 10),
    amount_delta   Decimal(38, 10),
    sign           Int8,
    inserted_at  DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(window_start)
ORDER BY (tenant, meter, customer, group_key, window_start)`, database, table)
}

func (s *Sink) createTables(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	// Each CREATE is tried a few times: ClickHouse (18.16 at least) can
	// fail a DDL statement that races another one on the server.
	ddlBackoff := engine.Backoff{Min: 200 * time.Millisecond, Max: 2 * time.Second, Attempts: 5}
	for _, stmt := range []struct{ what, sql string }{
		{"database " + s.cfg.Database, "CREATE DATABASE IF NOT EXISTS " + s.cfg.Database},
		{"table " + s.cfg.Database + "." + s.cfg.Table, TableDDL(s.cfg.Database, s.cfg.Table)},
		{"table " + s.cfg.Database + "." + DeadLettersTable, DeadLettersDDL(s.cfg.Database)},
	} {
		err := ddlBackoff.Retry(ctx, func(int) error { return s.conn.Exec(ctx, stmt.sql) }, nil)
		if err != nil {
			return fmt.Errorf("clickhouse: create %s on %s (up to %d attempts): %w", stmt.what, s.cfg.Addr, ddlBackoff.Attempts, err)
		}
	}
	// Tables created by earlier versions lack later columns. 18.16 has no
	// ADD COLUMN IF NOT EXISTS, so ask system.columns. (Rows stored before
	// get the defaults: no plan, zero deltas and sign.)
	for _, col := range []struct{ name, typ, after string }{
		{"breakdown", "String", "final"},
		{"plan", "String", "breakdown"},
		{"quantity_delta", "Decimal(38, 10)", "plan"},
		{"amount_delta", "Decimal(38, 10)", "quantity_delta"},
		{"sign", "Int8", "amount_delta"},
	} {
		var n uint64
		row := s.conn.QueryRow(ctx, "SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?", s.cfg.Database, s.cfg.Table, col.name)
		if err := row.Scan(&n); err != nil {
			return fmt.Errorf("clickhouse: inspect columns of %s.%s: %w", s.cfg.Database, s.cfg.Table, err)
		}
		if n > 0 {
			continue
		}
		if err := s.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s ADD COLUMN %s %s AFTER %s", s.cfg.Database, s.cfg.Table, col.name, col.typ, col.after)); err != nil {
			return fmt.Errorf("clickhouse: add column %s to %s.%s: %w", col.name, s.cfg.Database, s.cfg.Table, err)
		}
	}
	return nil
}

// Name implements engine.Sink.
func (s *Sink) Name() string { return "clickhouse:" + s.cfg.Database + "." + s.cfg.Table }

// Write inserts rows in one INSERT, sent in blocks of at most blockRows
// rows. A batch that fails may have been partly stored; the engine retries
// it whole, and the table collapses duplicates.
func (s *Sink) Write(ctx context.Context, rows []engine.RatedRow) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	batch, err := s.conn.PrepareBatch(ctx, fmt.Sprintf(`INSERT INTO %s.%s (tenant, meter, customer, group_key,
        window_start, window_end, quantity, event_count, amount, currency, unit_price, revision, final, breakdown,
        plan, quantity_delta, amount_delta, sign)`, s.cfg.Database, s.cfg.Table))
	if err != nil {
		return fmt.Errorf("clickhouse: prepare batch: %w", err)
	}
	defer batch.Abort()
	var cols rowColumns
	for from := 0; from < len(rows); from += blockRows {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("clickhouse: insert %d rows into %s: %w", len(rows), s.Name(), context.Cause(ctx))
		}
		block := rows[from:min(from+blockRows, len(rows))]
		for i, col := range cols.fill(block) {
			if err := batch.Column(i).Append(col); err != nil {
				return fmt.Errorf("clickhouse: append column %d of %d rows for %s: %w", i, len(block), s.Name(), err)
			}
		}
		if from+blockRows >= len(rows) {
			break // Send sends the last block
		}
		if err := batch.Flush(); err != nil {
			return fmt.Errorf("clickhouse: send a block of %d rows into %s: %w", len(block), s.Name(), err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("clickhouse: insert %d rows into %s: %w", len(rows), s.Name(), err)
	}
	return nil
}

// BatchRows implements engine.BatchSizer: an INSERT has a fixed cost (a
// round trip for the table's header, the server writing one part), so
// 50K-row batches go at 465-695K rows/s where 10K-row ones stay near 330K
// (BenchmarkWrite).
func (s *Sink) BatchRows() int { return 50_000 }

// blockRows bounds the rows of one block of an INSERT. The driver's
// columns and its send buffer keep their capacity from block to block, so
// a batch costs no regrowth of them past its first block: BenchmarkWrite
// of 50K rows went from 324-371K to 465-695K rows/s (bench/RESULTS.md).
// The server squashes the blocks of one INSERT back into one part
// (min_insert_block_size_rows), so small blocks add no parts to merge.
const blockRows = 2048

// deadlineConn bounds each write to a connection by timeout.
type deadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c deadlineConn) Write(b []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// rowColumns holds one block's rows column by column: one Append per
// column instead of fourteen boxed values per row. Its arrays are reused
// from block to block (the driver copies what it is given).
type rowColumns struct {
	tenants, meters, customers, groups, currencies, breakdowns, plans []string
	starts, ends                                                      []time.Time
	quantities, amounts, unitPrices, quantityDeltas, amountDeltas     []decimal.Decimal
	counts, revisions                                                 []uint64
	finals                                                            []uint8
	signs                                                             []int8
	text                                                              []byte
	breakdownEnds                                                     []int
}

// fill sets c to rows and returns its columns in the INSERT's order.
func (c *rowColumns) fill(rows []engine.RatedRow) []any {
	n := len(rows)
	c.tenants, c.meters, c.customers, c.groups = resize(c.tenants, n), resize(c.meters, n), resize(c.customers, n), resize(c.groups, n)
	c.currencies, c.breakdowns = resize(c.currencies, n), resize(c.breakdowns, n)
	c.starts, c.ends = resize(c.starts, n), resize(c.ends, n)
	c.quantities, c.amounts, c.unitPrices = resize(c.quantities, n), resize(c.amounts, n), resize(c.unitPrices, n)
	c.counts, c.revisions, c.finals = resize(c.counts, n), resize(c.revisions, n), resize(c.finals, n)
	c.text, c.breakdownEnds = c.text[:0], resize(c.breakdownEnds, n)
	c.plans, c.quantityDeltas, c.amountDeltas, c.signs = resize(c.plans, n), resize(c.quantityDeltas, n), resize(c.amountDeltas, n), resize(c.signs, n)
	for i := range rows {
		r := &rows[i]
		c.tenants[i], c.meters[i], c.customers[i], c.groups[i], c.currencies[i] = r.Tenant, r.Meter, r.Customer, r.GroupKey, r.Currency
		c.starts[i], c.ends[i] = r.WindowStart, r.WindowEnd
		c.quantities[i], c.amounts[i], c.unitPrices[i] = r.Quantity, r.Amount, r.UnitPrice
		c.counts[i], c.revisions[i] = r.Count, r.Revision
		c.plans[i], c.quantityDeltas[i], c.amountDeltas[i], c.signs[i] = r.Plan, r.QuantityDelta, r.AmountDelta, r.Sign
		c.finals[i] = 0
		if r.Final {
			c.finals[i] = 1
		}
		c.text = engine.AppendBreakdownJSON(c.text, r.Breakdown)
		c.breakdownEnds[i] = len(c.text)
	}
	// The block's breakdowns are one string, sliced: one allocation a
	// block instead of one a row.
	all, from := string(c.text), 0
	for i, end := range c.breakdownEnds {
		c.breakdowns[i], from = all[from:end], end
	}
	return []any{c.tenants, c.meters, c.customers, c.groups, c.starts, c.ends, c.quantities, c.counts, c.amounts,
		c.currencies, c.unitPrices, c.revisions, c.finals, c.breakdowns, c.plans, c.quantityDeltas, c.amountDeltas, c.signs}
}

// resize returns s with length n, reusing its array when it is large enough.
func resize[T any](s []T, n int) []T { return slices.Grow(s[:0], n)[:n] }

// DeadLetters returns the sink of dead letters into the same database.
func (s *Sink) DeadLetters() *DeadLetterSink { return &DeadLetterSink{s: s} }

// DeadLetterSink writes dead letters to ClickHouse so that analysts can
// query them (late records above all). It implements engine.DeadLetterSink.
type DeadLetterSink struct{ s *Sink }

// Name implements engine.DeadLetterSink.
func (d *DeadLetterSink) Name() string {
	return "clickhouse:" + d.s.cfg.Database + "." + DeadLettersTable
}

// WriteDeadLetters inserts letters in one batch.
func (d *DeadLetterSink) WriteDeadLetters(ctx context.Context, letters []engine.DeadLetter) error {
	ctx, cancel := context.WithTimeout(ctx, d.s.cfg.Timeout)
	defer cancel()
	batch, err := d.s.conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s.%s (topic, partition, offset, reason, detail, raw)",
		d.s.cfg.Database, DeadLettersTable))
	if err != nil {
		return fmt.Errorf("clickhouse: prepare dead-letter batch: %w", err)
	}
	defer batch.Abort()
	for _, l := range letters {
		if err := batch.Append(l.Topic, l.Partition, l.Offset, string(l.Reason), l.Detail, string(l.Raw)); err != nil {
			return fmt.Errorf("clickhouse: append dead letter %s/%d/%d: %w", l.Topic, l.Partition, l.Offset, err)
		}
	}
	if err := batch.Send(); err != nil {
		return fmt.Errorf("clickhouse: insert %d dead letters: %w", len(letters), err)
	}
	return nil
}

// Ping checks the connection.
func (s *Sink) Ping(ctx context.Context) error { return s.conn.Ping(ctx) }

// Close closes the connection.
func (s *Sink) Close() error { return s.conn.Close() }

// Rated reads the highest revision (FINAL) of every row of tenant whose
// window starts in [from, to), for audits.
func (s *Sink) Rated(ctx context.Context, tenant string, from, to time.Time) ([]engine.RatedRow, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	rows, err := s.conn.Query(ctx, fmt.Sprintf(`SELECT meter, customer, group_key, window_start, window_end,
    toString(quantity), event_count, toString(amount), currency, revision
FROM %s.%s FINAL WHERE tenant = ? AND window_start >= ? AND window_start < ?`, s.cfg.Database, s.cfg.Table), tenant, from.UTC(), to.UTC())
	if err != nil {
		return nil, fmt.Errorf("clickhouse: read rated usage: %w", err)
	}
	defer rows.Close()
	var out []engine.RatedRow
	for rows.Next() {
		r := engine.RatedRow{Tenant: tenant}
		var quantity, amount string
		if err := rows.Scan(&r.Meter, &r.Customer, &r.GroupKey, &r.WindowStart, &r.WindowEnd, &quantity, &r.Count, &amount, &r.Currency, &r.Revision); err != nil {
			return nil, fmt.Errorf("clickhouse: read rated usage: %w", err)
		}
		if r.Quantity, err = decimal.NewFromString(quantity); err == nil {
			r.Amount, err = decimal.NewFromString(amount)
		}
		if err != nil {
			return nil, fmt.Errorf("clickhouse: rated usage row %s/%s: %w", r.Meter, r.Customer, err)
		}
		r.WindowStart, r.WindowEnd = r.WindowStart.UTC(), r.WindowEnd.UTC()
		out = append(out, r)
	}
	return out, rows.Err()
}
