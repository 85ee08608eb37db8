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
// over all groups, with its charge under the customer's plan.
type PeriodUsage struct {
	Meter       string          `json:"meter"`
	PeriodStart time.Time       `json:"period_start"`
	PeriodEnd   time.Time       `json:"period_end"`
	Quantity    decimal.Decimal `json:"quantity"`
	Count       uint64          `json:"count"`
	Amount      decimal.Decimal `json:"amount"`
	Currency    string          `json:"currency"`
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
}

// ErrNotRunning is returned by Usage while the engine is not consuming.
var ErrNotRunning = errors.New("engine is not running")

// ErrUnknownMeter is returned by Usage for a meter that is not configured.
var ErrUnknownMeter = errors.New("unknown meter")

type usageQuery struct {
	req   UsageRequest
	reply chan Usage
	err   chan error
}

// Usage returns the customer's live aggregates: the windows in memory and the
// billing periods to date, consistent with the state the next checkpoint
// will hold. Safe for concurrent use; answered by the customer's shard
// between events, without locks on the per-record path.
func (e *Engine) Usage(ctx context.Context, req UsageRequest) (Usage, error) {
	if req.Meter != "" && e.decoder.meters.byName(req.Meter) == nil {
		return Usage{}, fmt.Errorf("%w %q; configured: %v", ErrUnknownMeter, req.Meter, e.decoder.meters.Names())
	}
	shards := e.live.Load()
	if shards == nil {
		return Usage{}, ErrNotRunning
	}
	s := (*shards)[routingHash(req.Customer)%uint64(len(*shards))]
	q := &usageQuery{req: req, reply: make(chan Usage, 1), err: make(chan error, 1)}
	select {
	case s.queries <- q:
	case <-ctx.Done():
		return Usage{}, ctx.Err()
	}
	select {
	case u := <-q.reply:
		return u, nil
	case err := <-q.err:
		return Usage{}, err
	case <-ctx.Done():
		return Usage{}, ctx.Err()
	}
}

// answer runs on the shard goroutine.
func (s *shard) answer(q *usageQuery) {
	req := q.req
	u := Usage{Customer: req.Customer, Windows: []UsageWindow{}, Periods: []PeriodUsage{}}
	if s.watermarkNs != minWatermark {
		wm := time.Unix(0, s.watermarkNs).UTC()
		u.Watermark = &wm
	}
	for key, w := range s.byCustomer[req.Customer] {
		if req.Meter != "" && key.meter != req.Meter {
			continue
		}
		start, end := time.Unix(0, key.startNs).UTC(), time.Unix(0, w.endNs).UTC()
		if key.period {
			charge, err := s.rater.Rate(key.customer, key.meter, start, w.quantity())
			if err != nil {
				q.err <- fmt.Errorf("rate period of %s: %w", key.meter, err)
				return
			}
			u.Periods = append(u.Periods, PeriodUsage{Meter: key.meter, PeriodStart: start, PeriodEnd: end,
				Quantity: w.quantity(), Count: w.count, Amount: charge.Amount, Currency: charge.Currency})
			continue
		}
		if !req.Windows || (!req.From.IsZero() && start.Before(req.From)) || (!req.To.IsZero() && !start.Before(req.To)) {
			continue
		}
		u.Windows = append(u.Windows, UsageWindow{Meter: key.meter, GroupKey: key.groupKey, WindowStart: start, WindowEnd: end,
			Quantity: w.quantity(), Count: w.count, Revision: w.revision, Closed: s.rules.closed(w.endNs, s.watermarkNs)})
	}
	sort.Slice(u.Windows, func(i, j int) bool {
		a, b := u.Windows[i], u.Windows[j]
		if !a.WindowStart.Equal(b.WindowStart) {
			return a.WindowStart.Before(b.WindowStart)
		}
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		return a.GroupKey < b.GroupKey
	})
	sort.Slice(u.Periods, func(i, j int) bool {
		a, b := u.Periods[i], u.Periods[j]
		if a.Meter != b.Meter {
			return a.Meter < b.Meter
		}
		return a.PeriodStart.Before(b.PeriodStart)
	})
	q.reply <- u
}
