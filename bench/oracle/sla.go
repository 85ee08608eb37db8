package oracle

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// SLA in the oracle's world: most plan versions promise availability
// (99.9%, credits 10% below it and 25% below 99%) on some of their meters,
// and customers have outages (10 minutes to 20 hours, some across a
// billing period's end), each reported once its over, as one sla.outage
// event with its start and end. The oracle measures each closed billing
// period's availability from the union of the customer's outages in it,
// independently of the engine, and prices the credit on what the period's
// rows charged the meter (its windows and its fee row).

// oSLA is a plan version's availability objective.
type oSLA struct {
	creditOn []string // meters, sorted
	// service is set when the objective also counts the outages of the
	// shared service (serviceName), reported as events naming it.
	service bool
}

// serviceName is the shared service of the world's objectives.
const serviceName = "core"

// oOutage is one outage of a customer.
type oOutage struct {
	id         string
	start, end time.Time
}

// genSLA gives three in four plan versions the objective and each
// customer up to three outages within [start, end), as placed records
// (reported up to jitter after they end).
func (w *oWorld) genSLA(rng *rand.Rand, start, end time.Time, jitter time.Duration) []placedRecord {
	for _, id := range []string{"basic", "pro"} {
		for i, p := range w.plans[id] {
			if rng.IntN(4) == 0 && (id != "basic" || i > 0) { // the default plan's first version always has it
				continue
			}
			on := []string{"calls", "data", "sms"}
			rng.Shuffle(len(on), func(i, j int) { on[i], on[j] = on[j], on[i] })
			on = on[:1+rng.IntN(3)]
			sort.Strings(on)
			// The default plan's first version measures the shared
			// service: some objective does, so its events are not dead
			// letters.
			p.sla = &oSLA{creditOn: on, service: rng.IntN(2) == 0 || id == "basic" && i == 0}
		}
	}
	var out []placedRecord
	for _, c := range w.customers {
		for i := range rng.IntN(4) {
			from := start.Add(time.Duration(rng.Int64N(int64(end.Sub(start) - 24*time.Hour))))
			o := &oOutage{id: fmt.Sprintf("inc-%s-%d", c.id, i), start: from.Truncate(time.Second),
				end: from.Add(10*time.Minute + time.Duration(rng.Int64N(int64(20*time.Hour)))).Truncate(time.Second)}
			w.outages[c.id] = append(w.outages[c.id], o)
			r := oRecord{id: fmt.Sprintf("out-%s-%d", c.id, i), customer: c.id, at: o.start, outage: o}
			out = append(out, placedRecord{rec: r, place: o.end.Add(time.Duration(rng.Int64N(int64(jitter) + 1)))})
		}
	}
	// The shared service's outages (10 minutes to 6 hours), each event
	// sent to every partition.
	for i := range 1 + rng.IntN(3) {
		from := start.Add(time.Duration(rng.Int64N(int64(end.Sub(start) - 24*time.Hour))))
		o := &oOutage{id: fmt.Sprintf("inc-%s-%d", serviceName, i), start: from.Truncate(time.Second),
			end: from.Add(10*time.Minute + time.Duration(rng.Int64N(int64(6*time.Hour)))).Truncate(time.Second)}
		w.serviceOutages = append(w.serviceOutages, o)
		r := oRecord{id: fmt.Sprintf("out-%s-%d", serviceName, i), service: serviceName, at: o.start, outage: o}
		out = append(out, placedRecord{rec: r, place: o.end.Add(time.Duration(rng.Int64N(int64(jitter) + 1)))})
	}
	return out
}

// yaml renders s as a plan's sla field.
func (s *oSLA) yaml() string {
	service := ""
	if s.service {
		service = ", service: " + serviceName
	}
	return fmt.Sprintf("    sla:\n      - {name: uptime, kind: availability, target: \"99.9\", credits: [{below: \"99.9\", credit: \"10\"}, {below: \"99\", credit: \"25\"}], creditOn: [%s]%s}\n",
		strings.Join(s.creditOn, ", "), service)
}

// renderOutage is an outage's event.
func renderOutage(r oRecord) []byte {
	if r.service != "" {
		return fmt.Appendf(nil, `{"type":"sla.outage","id":%q,"service":%q,"outage":%q,"time":%q,"end":%q}`,
			r.id, r.service, r.outage.id, r.outage.start.Format(time.RFC3339), r.outage.end.Format(time.RFC3339))
	}
	return fmt.Appendf(nil, `{"type":"sla.outage","id":%q,"customer":%q,"outage":%q,"time":%q,"end":%q}`,
		r.id, r.customer, r.outage.id, r.outage.start.Format(time.RFC3339), r.outage.end.Format(time.RFC3339))
}

// creditKey names a credit row: customer, meter, period start.
type creditKey struct {
	customer, meter string
	start           int64
}

// checkCredits compares the credit rows (group @sla:uptime) with the
// oracle's: for each customer and billing period closed at watermark, the
// availability measured from its outages and, when a step is passed, the
// credit on each meter the objective of the plan at the period's end
// credits, a share of what the rows charged it (charged: the windows'
// amounts; fees: the fee rows). It returns the problems and how many
// credits were owed.
func (w *oWorld) checkCredits(rows []Row, charged map[oPeriodKey]decimal.Decimal, fees map[oPeriodKey]decimal.Decimal, watermark time.Time) (problems []string, owed int) {
	got := map[creditKey]Row{}
	for _, r := range rows {
		if strings.HasPrefix(r.GroupKey, "@sla:") {
			if r.GroupKey != "@sla:uptime" {
				problems = append(problems, fmt.Sprintf("credit row of an objective no plan sets: %s %s %s", r.Customer, r.Meter, r.GroupKey))
				continue
			}
			got[creditKey{r.Customer, r.Meter, r.WindowStart.UnixNano()}] = r
		}
	}
	hundred := decimal.NewFromInt(100)
	for _, c := range w.customers {
		periods := map[int64]time.Time{}
		for _, o := range append(w.outages[c.id], w.serviceOutages...) {
			for ps, pe := c.period(o.start); ps.Before(o.end); ps, pe = c.period(pe) {
				periods[ps.UnixNano()] = pe
			}
		}
		for startNs, pe := range periods {
			ps := time.Unix(0, startNs).UTC()
			closed := true
			for _, m := range w.meters {
				closed = closed && !w.settles(m, c, pe).After(watermark)
			}
			if !closed {
				continue
			}
			id, subscribed := w.planAt(c.id, pe.Add(-time.Nanosecond))
			if !subscribed {
				id = DefaultPlan
			}
			v := w.version(id, pe.Add(-time.Nanosecond))
			if v.sla == nil {
				continue
			}
			// The union of the outages within the period.
			type span struct{ from, to time.Time }
			var spans []span
			outages := w.outages[c.id]
			if v.sla.service {
				outages = append(outages[:len(outages):len(outages)], w.serviceOutages...)
			}
			for _, o := range outages {
				from, to := o.start, o.end
				if from.Before(ps) {
					from = ps
				}
				if to.After(pe) {
					to = pe
				}
				if from.Before(to) {
					spans = append(spans, span{from, to})
				}
			}
			sort.Slice(spans, func(i, j int) bool { return spans[i].from.Before(spans[j].from) })
			var down time.Duration
			var reached time.Time
			for _, s := range spans {
				from := s.from
				if from.Before(reached) {
					from = reached
				}
				if s.to.After(from) {
					down += s.to.Sub(from)
				}
				if s.to.After(reached) {
					reached = s.to
				}
			}
			length := decimal.NewFromInt(int64(pe.Sub(ps)))
			num := hundred.Mul(length.Sub(decimal.NewFromInt(int64(down))))
			percent := decimal.Zero
			if num.LessThan(dec("99.9").Mul(length)) {
				percent = decimal.NewFromInt(10)
			}
			if num.LessThan(dec("99").Mul(length)) {
				percent = decimal.NewFromInt(25)
			}
			for _, meter := range v.sla.creditOn {
				k := creditKey{c.id, meter, startNs}
				pk := oPeriodKey{c.id, meter, startNs}
				charge := charged[pk].Add(fees[pk])
				want := w.rounding.round(charge.Mul(percent).Shift(-2)).Neg()
				r, ok := got[k]
				delete(got, k)
				if want.IsZero() {
					if ok && !r.Amount.IsZero() {
						problems = append(problems, fmt.Sprintf("credit %s for %s %s period %s: the oracle owes none (availability %s)", r.Amount, c.id, meter, ps, num.DivRound(length, 4)))
					}
					continue
				}
				owed++
				switch {
				case !ok:
					problems = append(problems, fmt.Sprintf("no credit row for %s %s period %s: the oracle owes %s (availability %s, %s%% of %s)", c.id, meter, ps, want, num.DivRound(length, 4), percent, charge))
				case !r.Amount.Equal(want) || !r.Quantity.Equal(num.DivRound(length, 4)):
					problems = append(problems, fmt.Sprintf("credit row for %s %s period %s: %s at %s%%, the oracle says %s at %s%% (%s%% of %s)", c.id, meter, ps, r.Amount, r.Quantity, want, num.DivRound(length, 4), percent, charge))
				case !r.WindowEnd.Equal(pe) || !r.Final || r.Count < uint64(len(spans)):
					problems = append(problems, fmt.Sprintf("credit row for %s %s period %s: ends %s, final %v, %d outages counted; the oracle's period ends %s with %d outages in it", c.id, meter, ps, r.WindowEnd, r.Final, r.Count, pe, len(spans)))
				}
			}
		}
	}
	for k, r := range got {
		if !r.Amount.IsZero() {
			problems = append(problems, fmt.Sprintf("credit row %s for %s %s period from %s, which the oracle owes nothing", r.Amount, k.customer, k.meter, time.Unix(0, k.start).UTC()))
		}
	}
	return problems, owed
}
