package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// Statement is what a customer owes for a billing period, as an invoice
// shows it: a line per meter's usage, per period fee, per SLA credit, and
// the total. It is built from the period's rated rows alone (the highest
// revision of each), so its total is theirs to the cent.
//
// Invariant: every row belongs to exactly one line and a line's amount is
// the sum of its rows', so the lines add up to the rows (BuildStatement
// checks it).
type Statement struct {
	Customer    string          `json:"customer"`
	PeriodStart time.Time       `json:"period_start"`
	PeriodEnd   time.Time       `json:"period_end"`
	Currency    string          `json:"currency"`
	Lines       []StatementLine `json:"lines"`
	Total       decimal.Decimal `json:"total"`
	// Final is set when every row of the period is final (its windows
	// closed); until then the statement is a preview.
	Final bool `json:"final"`
	// Rows counts the rows it adds up.
	Rows int `json:"rows"`
}

// StatementLine is one line of a statement.
type StatementLine struct {
	// Kind is usage, fee or credit.
	Kind  string `json:"kind"`
	Meter string `json:"meter"`
	// Objective names an SLA credit's objective.
	Objective string `json:"objective,omitempty"`
	// Quantity is the usage (usage lines), or the measurement (credits).
	Quantity decimal.Decimal `json:"quantity"`
	Amount   decimal.Decimal `json:"amount"`
	// Explanation says in one sentence what the line is for.
	Explanation string `json:"explanation"`
	// Breakdown is how the amount was reached: the period's tiers,
	// allowance and unit prices (usage), the fee and true-up (fees), the
	// measurement and the credit's base (credits).
	Breakdown []rating.Line `json:"breakdown,omitempty"`
	// Groups split a usage line by the meter's dimensions (or rate).
	Groups []StatementGroup `json:"groups,omitempty"`
}

// StatementGroup is a usage line's share of one group key.
type StatementGroup struct {
	GroupKey string          `json:"group_key"`
	Quantity decimal.Decimal `json:"quantity"`
	Amount   decimal.Decimal `json:"amount"`
}

// BuildStatement makes customer's statement for the billing period
// [start, end) from rows: the highest revision of each, of any customers
// and periods (the others are left out). unit names a meter's unit
// (optional).
func BuildStatement(customer string, start, end time.Time, rows []RatedRow, unit func(meter string) string) (Statement, error) {
	best := map[string]RatedRow{}
	for _, r := range rows {
		if r.Customer != customer || r.WindowStart.Before(start) || !r.WindowStart.Before(end) {
			continue
		}
		if prev, ok := best[r.Identity()]; !ok || r.Revision > prev.Revision {
			best[r.Identity()] = r
		}
	}
	st := Statement{Customer: customer, PeriodStart: start.UTC(), PeriodEnd: end.UTC(), Lines: []StatementLine{}, Final: true}
	usage := map[string]*StatementLine{}
	// ptd is, per meter, the breakdown of the row charging the most units:
	// the period-to-date charge at the latest emission.
	ptd := map[string]decimal.Decimal{}
	var rowsTotal decimal.Decimal
	currencies := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(best)) {
		r := best[k]
		st.Rows++
		st.Final = st.Final && r.Final
		rowsTotal = rowsTotal.Add(r.Amount)
		if r.Currency != "" {
			currencies[r.Currency] = true
		}
		switch {
		case r.GroupKey == PeriodFeeGroup:
			st.Lines = append(st.Lines, StatementLine{Kind: "fee", Meter: r.Meter, Quantity: r.Quantity, Amount: r.Amount,
				Explanation: feeExplanation(r), Breakdown: r.Breakdown})
		case strings.HasPrefix(r.GroupKey, SLAGroupPrefix):
			l := StatementLine{Kind: "credit", Meter: r.Meter, Objective: strings.TrimPrefix(r.GroupKey, SLAGroupPrefix),
				Quantity: r.Quantity, Amount: r.Amount, Breakdown: r.Breakdown}
			l.Explanation = "SLA credit"
			if len(r.Breakdown) > 0 {
				l.Explanation = r.Breakdown[0].Description
			}
			st.Lines = append(st.Lines, l)
		default:
			l := usage[r.Meter]
			if l == nil {
				l = &StatementLine{Kind: "usage", Meter: r.Meter}
				usage[r.Meter] = l
			}
			l.Quantity = l.Quantity.Add(r.Quantity)
			l.Amount = l.Amount.Add(r.Amount)
			i := slices.IndexFunc(l.Groups, func(g StatementGroup) bool { return g.GroupKey == r.GroupKey })
			if i < 0 {
				l.Groups = append(l.Groups, StatementGroup{GroupKey: r.GroupKey})
				i = len(l.Groups) - 1
			}
			l.Groups[i].Quantity = l.Groups[i].Quantity.Add(r.Quantity)
			l.Groups[i].Amount = l.Groups[i].Amount.Add(r.Amount)
			var units decimal.Decimal
			for _, b := range r.Breakdown {
				units = units.Add(b.Units)
			}
			if len(r.Breakdown) > 0 && (l.Breakdown == nil || units.GreaterThan(ptd[r.Meter])) {
				l.Breakdown, ptd[r.Meter] = r.Breakdown, units
			}
		}
	}
	for _, l := range usage {
		slices.SortFunc(l.Groups, func(a, b StatementGroup) int { return strings.Compare(a.GroupKey, b.GroupKey) })
		if len(l.Groups) == 1 && l.Groups[0].GroupKey == "" {
			l.Groups = nil
		}
		u := ""
		if unit != nil {
			u = unit(l.Meter)
		}
		l.Explanation = usageExplanation(l, u)
		st.Lines = append(st.Lines, *l)
	}
	order := map[string]int{"usage": 0, "fee": 1, "credit": 2}
	slices.SortStableFunc(st.Lines, func(a, b StatementLine) int {
		if c := cmp.Compare(order[a.Kind], order[b.Kind]); c != 0 {
			return c
		}
		if c := strings.Compare(a.Meter, b.Meter); c != 0 {
			return c
		}
		return strings.Compare(a.Objective, b.Objective)
	})
	for _, l := range st.Lines {
		st.Total = st.Total.Add(l.Amount)
	}
	if !st.Total.Equal(rowsTotal) {
		return Statement{}, fmt.Errorf("engine: invariant broken: statement lines add up to %s, its rows to %s", st.Total, rowsTotal)
	}
	st.Final = st.Final && st.Rows > 0 // nothing to bill is no final statement
	switch len(currencies) {
	case 0:
	case 1:
		for c := range currencies {
			st.Currency = c
		}
	default:
		return Statement{}, fmt.Errorf("engine: the period's rows are in %d currencies (%v); a statement has one", len(currencies), slices.Sorted(maps.Keys(currencies)))
	}
	return st, nil
}

// usageExplanation is a usage line's sentence.
func usageExplanation(l *StatementLine, unit string) string {
	q := l.Quantity.String()
	if unit != "" {
		q += " " + unit
	}
	text := fmt.Sprintf("%s of %s used in the period", q, l.Meter)
	if len(l.Groups) > 1 {
		text += fmt.Sprintf(", in %d groups", len(l.Groups))
	}
	if len(l.Breakdown) > 0 {
		return text + ", priced as the breakdown shows (free allowance first, then each tier or rate)."
	}
	return text + "."
}

// feeExplanation is a period fee line's sentence.
func feeExplanation(r RatedRow) string {
	if len(r.Breakdown) == 0 {
		return fmt.Sprintf("Period fee of %s.", r.Meter)
	}
	var parts []string
	for _, b := range r.Breakdown {
		parts = append(parts, fmt.Sprintf("%s %s", b.Description, b.Amount))
	}
	return fmt.Sprintf("Period fee of %s: %s.", r.Meter, strings.Join(parts, "; "))
}

// ErrPeriodSettled is returned by Statement for a billing period whose
// state has left memory: its rows are in the sinks.
var ErrPeriodSettled = errors.New("billing period settled")

// Statement is customer's statement for the billing period starting in
// month (zero: the period in progress), from live state: what the rows
// emitted so far add up to, one usage line per meter (usage not emitted
// yet is not on it; see the summary's quantity). BuildStatement on the
// rows themselves splits usage by group too.
func (e *Engine) Statement(ctx context.Context, customer string, month time.Time) (Statement, error) {
	now := e.now()
	var rows []RatedRow
	var start, end time.Time
	var err error
	var closed bool
	qerr := e.onShard(ctx, customer, func(s *shard) {
		start, end, rows, err = s.statementRows(customer, month, s.entitlementTime(now))
		cust := s.customers.get(customer)
		closed = s.rules.closed(s.slaSettle(cust, end.UnixNano()), s.watermarkNs)
	})
	if qerr != nil {
		return Statement{}, qerr
	}
	if err != nil {
		return Statement{}, err
	}
	st, err := BuildStatement(customer, start, end, rows, e.decoder.meters.unitOf)
	st.Final = st.Final && closed // final once every meter's period closed
	return st, err
}

// statementRows rebuilds, from memory, what customer's billing period has
// emitted: per meter the sum of its usage rows (one row: the live
// statement does not split usage by group; the rows do) with the
// period-to-date breakdown, its fee row, and its SLA credits.
func (s *shard) statementRows(customer string, month time.Time, atNs int64) (start, end time.Time, rows []RatedRow, err error) {
	cust := s.customers.get(customer)
	startNs, endNs := periodOfMonth(cust, month, atNs)
	start, end = time.Unix(0, startNs).UTC(), time.Unix(0, endNs).UTC()
	// A meter's period leaves memory reviseHorizon after it settles (it
	// may stay in the store, revisable, with finalizeAfter): past that the
	// live state no longer holds the whole period.
	for _, m := range s.meters.list {
		if !s.rules.hot(m.settleEnd(endNs, m.windowLoc(cust)), s.watermarkNs) {
			return start, end, nil, fmt.Errorf("%w: customer %s's period %s..%s left memory; its rows are in the sinks (ClickHouse: the highest revision of each), or run tally statement",
				ErrPeriodSettled, customer, start.Format(time.RFC3339), end.Format(time.RFC3339))
		}
	}
	sub := s.subscriber(customer)
	id, ok := s.names.find(customer)
	if !ok {
		return start, end, nil, nil
	}
	// A period aggregate holds what its windows charged (a window may have
	// left memory before its period did): one usage row per meter, the
	// period's total, and its fee row.
	for _, p := range s.byCustomer[id] {
		if !p.key.period || p.key.startNs != startNs {
			continue
		}
		m := s.meter(p)
		currency, _ := s.rater.Currency(sub, m.Name, start)
		quantity := p.get(numEmittedQuantity)
		if !m.additive() {
			quantity = p.quantity(m)
		}
		if charged := p.get(numChargedAmount); !charged.IsZero() || quantity.IsPositive() {
			row := RatedRow{Tenant: s.tenant, Meter: m.Name, Customer: customer, WindowStart: start, WindowEnd: end,
				Quantity: quantity, Amount: charged, Currency: currency, Final: s.rules.closed(p.periodEndNs, s.watermarkNs)}
			if m.additive() && quantity.IsPositive() {
				if c, err := s.rater.Increment(sub, m.Name, start, decimal.Zero, quantity); err == nil {
					row.Breakdown = c.Lines
				}
			}
			rows = append(rows, row)
		}
		if p.revision == 0 {
			continue // no fee row emitted
		}
		row := RatedRow{Tenant: s.tenant, Meter: m.Name, Customer: customer, GroupKey: PeriodFeeGroup, WindowStart: start, WindowEnd: end,
			Quantity: p.quantity(m), Amount: p.get(numEmittedAmount), Currency: currency, Revision: p.revision, Final: p.emittedFinal}
		if c, ok, err := s.rater.PeriodFee(sub, m.Name, start, end, p.get(numChargedAmount)); err == nil && ok {
			row.Breakdown = c.Lines
		}
		rows = append(rows, row)
	}
	if sp := s.slaPeriods[slaKey{customer, startNs}]; sp != nil && len(sp.credits) > 0 {
		var terms rating.SLATerms
		if rules, ok := s.rater.(SLARules); ok {
			terms, _ = rules.SLA(sub, end)
		}
		for _, k := range slices.Sorted(maps.Keys(sp.credits)) {
			c := sp.credits[k]
			objective, meter, _ := strings.Cut(k, "\x00")
			row := RatedRow{Tenant: s.tenant, Meter: meter, Customer: customer, GroupKey: SLAGroupPrefix + objective,
				WindowStart: start, WindowEnd: end, Amount: c.amount, Currency: terms.Currency, Revision: c.revision, Final: true}
			if i := slices.IndexFunc(terms.Objectives, func(o rating.Objective) bool { return o.Name == objective }); i >= 0 {
				o := &terms.Objectives[i]
				m := s.measure(sp, o, atNs)
				_, percent := o.Evaluate(m)
				row.Quantity, row.Count = m.Value(), m.Samples
				row.Breakdown = []rating.Line{{Description: creditExplanation(o, m, percent, meter), UnitPrice: percent.Shift(-2).Neg(), Amount: c.amount}}
			}
			rows = append(rows, row)
		}
	}
	return start, end, rows, nil
}

// BillingPeriodOf is customer's billing period starting in month (its
// year and month as written), under cfg's time zone and anchor day and
// the customer's own, and when it settles for every meter (its end, or
// the end of the last window starting in it).
func BillingPeriodOf(cfg Config, meters *Meters, customer string, month time.Time) (start, end, settle time.Time, err error) {
	registry, err := newCustomers(cfg.Customers, cfg.Timezone, cfg.BillingAnchorDay)
	if err != nil {
		return time.Time{}, time.Time{}, time.Time{}, err
	}
	cust := registry.get(customer)
	s, e := periodOfMonth(cust, month, 0)
	settleNs := e
	for _, m := range meters.list {
		settleNs = max(settleNs, m.settleEnd(e, m.windowLoc(cust)))
	}
	return time.Unix(0, s).UTC(), time.Unix(0, e).UTC(), time.Unix(0, settleNs).UTC(), nil
}

// Statement answers from the customer's task.
func (n *Node) Statement(ctx context.Context, customer string, month time.Time) (Statement, error) {
	e := n.customerEngine(customer)
	if e == nil {
		return Statement{}, ErrNotRunning
	}
	return e.Statement(ctx, customer, month)
}
