package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/shopspring/decimal"
)

// queryQueueLen bounds the queries waiting for one shard.
const queryQueueLen = 64

// UsageWindow is one window of a customer as the engine holds it now: open,
// closed and still revisable. Revision is the last emitted one (0: not yet
// emitted); the quantity may be ahead of it.
type UsageWindow struct {
	Meter       string          `json:"meter"`
	GroupKey    string          `json:"group_key"`
	WindowStart time.Time       `json:"window_start"`
	WindowEnd   time.Time       `json:"window_end"`
	Quantity    decimal.Decimal `json:"quantity"`
	Count       uint64          `json:"count"`
	Revision    uint64          `json:"revision"`
	Closed      bool            `json:"closed"`
}

// PeriodUsage is a meter's billing-period-to-date aggregate for a customer,
// over all groups. Quantity and Count hold every record aggregated so far;
// Amount is what the period's rows emitted so far add up to (the highest
// revision of each window's row, and the fee row with the flat fee and
// true-up once the period settled): what a billing consumer of the rows
// holds, never a second computation. Usage of windows not emitted yet (open
// ones, without emitOpenEvery) joins Amount when its window is emitted.
type PeriodUsage struct {
	Meter       string          `json:"meter"`
	PeriodStart time.Time       `json:"period_start"`
	PeriodEnd   time.Time       `json:"period_end"`
	Quantity    decimal.Decimal `json:"quantity"`
	Count       uint64          `json:"count"`
	Amount      decimal.Decimal `json:"amount"`
	// Fees is the part of Amount from the period's fee row.
	Fees     decimal.Decimal `json:"fees"`
	Currency string          `json:"currency"`
}

// Usage is the live view of one customer.
type Usage struct {
	Customer  string        `json:"customer"`
	Watermark *time.Time    `json:"watermark,omitempty"`
	Windows   []UsageWindow `json:"windows"`
	Periods   []PeriodUsage `json:"periods"`
}

// UsageRequest selects what Usage returns.
type UsageRequest struct {
	Customer string
	Meter    string // "" for every meter
	// Windows starting in [From, To) are returned; a zero bound is open.
	From, To time.Time
	// Windows false returns only the billing periods (a summary).
	Windows bool
	// Rollup, if set (MINUTE, HOUR, DAY, MONTH or a duration dividing a
	// day), sums the windows of SUM and COUNT meters into windows of that
	// size; other aggregations cannot be summed and are refused.
	Rollup string
}

// ErrBadRequest marks a request the engine cannot answer as asked.
var ErrBadRequest = errors.New("bad request")

// ErrNotRunning is returned by Usage while the engine is not consuming.
var ErrNotRunning = errors.New("engine is not running")

// ErrUnknownMeter is returned by Usage for a meter that is not configured.
var ErrUnknownMeter = errors.New("unknown meter")

// Usage returns the customer's live aggregates: the windows in memory and the
// billing periods to date, consistent with the state the next checkpoint
// will hold. Safe for concurrent use; answered by the customer's shard
// between events, without locks on the per-record path.
func (e *Engine) Usage(ctx context.Context, req UsageRequest) (Usage, error) {
	if req.Meter != "" && e.decoder.meters.byName(req.Meter) == nil {
		return Usage{}, fmt.Errorf("%w %q; configured: %v", ErrUnknownMeter, req.Meter, e.decoder.meters.Names())
	}
	var rollup windowSpec
	if req.Rollup != "" {
		var err error
		if rollup, err = parseWindow(req.Rollup, 0); err != nil {
			return Usage{}, fmt.Errorf("%w: window: %v", ErrBadRequest, err)
		}
		for _, m := range e.decoder.meters.list {
			if req.Meter != "" && m.Name != req.Meter {
				continue
			}
			if m.Aggregation != AggSum && m.Aggregation != AggCount {
				return Usage{}, fmt.Errorf("%w: meter %s aggregates with %s, whose windows cannot be summed into %s windows; ask for SUM or COUNT meters",
					ErrBadRequest, m.Name, m.Aggregation, req.Rollup)
			}
			if !rollup.month && (m.window.month || rollup.sizeNs < m.window.sizeNs || rollup.sizeNs%m.window.sizeNs != 0) {
				return Usage{}, fmt.Errorf("%w: window %s is not a whole multiple of meter %s's %s windows", ErrBadRequest, req.Rollup, m.Name, m.window.name)
			}
		}
	}
	var u Usage
	if err := e.onShard(ctx, req.Customer, func(s *shard) { u = s.usage(req) }); err != nil {
		return Usage{}, err
	}
	if req.Rollup != "" {
		u.Windows = e.rollUp(req.Customer, u.Windows, rollup)
	}
	return u, nil
}

// onShard runs fn on the shard of customer, between its records, and
// waits for it. If ctx ends first, fn may still run later: it must only
// write what the caller reads after a nil error.
func (e *Engine) onShard(ctx context.Context, customer string, fn func(s *shard)) error {
	shards := e.live.Load()
	if shards == nil {
		return ErrNotRunning
	}
	return runOn(ctx, (*shards)[routingHash(customer)%uint64(len(*shards))], fn)
}

// runOn runs fn on shard s, between its records, and waits for it (as
// onShard).
func runOn(ctx context.Context, s *shard, fn func(s *shard)) error {
	done := make(chan struct{})
	select {
	case s.queries <- func(s *shard) { fn(s); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// usage answers req; it runs on the shard goroutine.
func (s *shard) usage(req UsageRequest) Usage {
	u := Usage{Customer: req.Customer, Windows: []UsageWindow{}, Periods: []PeriodUsage{}}
	if s.watermarkNs != minWatermark {
		wm := time.Unix(0, s.watermarkNs).UTC()
		u.Watermark = &wm
	}
	var list []*window
	if id, ok := s.names.find(req.Customer); ok {
		list = s.byCustomer[id]
	}
	for _, w := range list {
		key, m := w.key, s.meter(w)
		meter := m.Name
		if req.Meter != "" && meter != req.Meter {
			continue
		}
		start, end := time.Unix(0, key.startNs).UTC(), time.Unix(0, w.endNs).UTC()
		if key.period {
			fees := decimal.Zero
			if w.revision > 0 { // the fee row was emitted: its amount is the last one
				fees = w.get(numEmittedAmount)
			}
			u.Periods = append(u.Periods, PeriodUsage{Meter: meter, PeriodStart: start, PeriodEnd: end,
				Quantity: w.quantity(m), Count: w.count, Amount: w.get(numChargedAmount).Add(fees), Fees: fees,
				Currency: s.currency(req.Customer, meter, key.startNs)})
			continue
		}
		if !req.Windows || (!req.From.IsZero() && start.Before(req.From)) || (!req.To.IsZero() && !start.Before(req.To)) {
			continue
		}
		u.Windows = append(u.Windows, UsageWindow{Meter: meter, GroupKey: s.names.str(key.group), WindowStart: start, WindowEnd: end,
			Quantity: w.quantity(m), Count: w.count, Revision: w.revision, Closed: s.rules.closed(w.endNs, s.watermarkNs)})
	}
	sortWindows(u.Windows)
	sort.Slice(u.Periods, func(i, j int) bool {
		a, b := u.Periods[i], u.Periods[j]
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		return a.PeriodStart.Before(b.PeriodStart)
	})
	return u
}

// BillingPeriod returns the billing period of customer holding t, by the
// customer's time zone and anchor day: a window is charged in the period
// holding its start.
func (e *Engine) BillingPeriod(customer string, t time.Time) (start, end time.Time) {
	cust := e.customers.get(customer)
	startNs, endNs := billingPeriod(t.UnixNano(), cust.loc, cust.anchorDay)
	return time.Unix(0, startNs).UTC(), time.Unix(0, endNs).UTC()
}

// currency is the currency of the plan pricing customer's meter at tNs
// (empty if none does).
func (s *shard) currency(customer, meter string, tNs int64) string {
	c, _ := s.rater.Currency(s.subscriber(customer), meter, time.Unix(0, tNs).UTC())
	return c
}

// rollUp sums windows (of SUM and COUNT meters) into windows of spec, in the
// time zone each meter's windows are aligned in. Revision is the lowest of
// the parts (what sinks hold at least); Closed when every part is closed.
func (e *Engine) rollUp(customer string, windows []UsageWindow, spec windowSpec) []UsageWindow {
	type rollKey struct {
		meter, group string
		start        int64
	}
	out := make(map[rollKey]*UsageWindow)
	var order []rollKey
	cust := e.customers.get(customer)
	for _, w := range windows {
		loc := time.UTC
		if m := e.decoder.meters.byName(w.Meter); m != nil && m.local {
			loc = cust.loc
		}
		start := spec.start(w.WindowStart.UnixNano(), loc)
		key := rollKey{meter: w.Meter, group: w.GroupKey, start: start}
		r := out[key]
		if r == nil {
			r = &UsageWindow{Meter: w.Meter, GroupKey: w.GroupKey, WindowStart: time.Unix(0, start).UTC(),
				WindowEnd: time.Unix(0, spec.end(start, loc)).UTC(), Quantity: decimal.Zero, Revision: w.Revision, Closed: true}
			out[key] = r
			order = append(order, key)
		}
		r.Quantity = r.Quantity.Add(w.Quantity)
		r.Count += w.Count
		r.Revision = min(r.Revision, w.Revision)
		r.Closed = r.Closed && w.Closed
	}
	rolled := make([]UsageWindow, len(order))
	for i, k := range order {
		rolled[i] = *out[k]
	}
	sortWindows(rolled)
	return rolled
}

// sortWindows orders windows by start, meter and group.
func sortWindows(ws []UsageWindow) {
	sort.Slice(ws, func(i, j int) bool {
		a, b := ws[i], ws[j]
		if !a.WindowStart.Equal(b.WindowStart) {
			return a.WindowStart.Before(b.WindowStart)
		}
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		return a.GroupKey < b.GroupKey
	})
}
