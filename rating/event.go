package rating

import (
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Per-event pricing. Some charges depend on each event, not on a total: a
// call's connect fee, a payment's fixed fee and its per-event minimum and
// maximum, the time-of-day band a call started in, the destination it
// called. A price with any of those is priced per event: each event's
// charge is computed when it is aggregated (RateEvent), windows add the
// charges up unrounded, and a window's amount is the rounded
// period-to-date sum after it minus the one before, so that a period's
// window amounts add up to its rounded total exactly, as in every model.

// Band is a time-of-day and day-of-week band, in the plan's timezone. An
// event is priced by the first band its start falls in; events in no band
// get the price's own unitPrice under the rate name "standard".
type Band struct {
	Name string `yaml:"name" json:"name"`
	// Days are the weekdays (mon..sun) the band applies on; none: every day.
	Days []string `yaml:"days" json:"days,omitempty"`
	// From and To bound the band in local wall-clock time, "HH:MM", From
	// inclusive, To exclusive; empty From is 00:00, empty To is 24:00.
	From      string          `yaml:"from" json:"from,omitempty"`
	To        string          `yaml:"to" json:"to,omitempty"`
	UnitPrice decimal.Decimal `yaml:"unitPrice" json:"unitPrice"`

	days     [7]bool // by time.Weekday
	from, to int     // minutes since midnight
}

// Destinations price an event by the longest prefix of one of its
// dimensions (e.g. the called number); events matching no prefix get the
// price's own unitPrice under the rate name "other".
type Destinations struct {
	Dimension string            `yaml:"dimension" json:"dimension"`
	Prefixes  []DestinationRate `yaml:"prefixes" json:"prefixes"`

	byPrefix map[string]*DestinationRate
	maxLen   int
}

// DestinationRate is the rate of one prefix. Prefixes sharing a Name are one
// destination (zone) and must share its rates.
type DestinationRate struct {
	Prefix    string          `yaml:"prefix" json:"prefix"`
	Name      string          `yaml:"name" json:"name"`
	UnitPrice decimal.Decimal `yaml:"unitPrice" json:"unitPrice"`
	// EventFee, when set, replaces the price's eventFee for the destination.
	EventFee *decimal.Decimal `yaml:"eventFee" json:"eventFee,omitempty"`
}

// Rate names for events that no band or destination prefix matches.
const (
	RateStandard = "standard"
	RateOther    = "other"
)

// PerEvent reports whether the price charges each event on its own.
func (p *Price) PerEvent() bool {
	return !p.EventFee.IsZero() || p.MinPerEvent != nil || p.MaxPerEvent != nil || len(p.Bands) > 0 || p.Destinations != nil
}

// RateKeyed reports whether events are priced at one of several named rates
// (bands or destinations); rows are then split by rate.
func (p *Price) RateKeyed() bool {
	return len(p.Bands) > 0 || p.Destinations != nil
}

var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday,
	"wed": time.Wednesday, "thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// validatePerEvent checks the per-event fields and prepares their lookups.
func (p *Price) validatePerEvent(where string) error {
	if !p.PerEvent() {
		return nil
	}
	if p.Model != PerUnit && p.Model != Percentage {
		return fmt.Errorf("%s.model: eventFee, minPerEvent, maxPerEvent, bands and destinations price each event, which per_unit and percentage prices do, not %s", where, p.Model)
	}
	if !p.FreeAllowance.IsZero() {
		return fmt.Errorf("%s.freeAllowance: a price charged per event (eventFee, per-event bounds, bands or destinations) has no free units; use minimumCommitment, or a graduated price with a zero first tier", where)
	}
	if p.EventFee.IsNegative() {
		return fmt.Errorf("%s.eventFee: %s is negative", where, p.EventFee)
	}
	for _, b := range []struct {
		name string
		v    *decimal.Decimal
	}{{"minPerEvent", p.MinPerEvent}, {"maxPerEvent", p.MaxPerEvent}} {
		if b.v != nil && b.v.IsNegative() {
			return fmt.Errorf("%s.%s: %s is negative", where, b.name, b.v)
		}
	}
	if p.MinPerEvent != nil && p.MaxPerEvent != nil && p.MinPerEvent.GreaterThan(*p.MaxPerEvent) {
		return fmt.Errorf("%s.minPerEvent: %s is above maxPerEvent %s", where, p.MinPerEvent, p.MaxPerEvent)
	}
	if p.Model == Percentage && p.RateKeyed() {
		return fmt.Errorf("%s: bands and destinations price units; a percentage price has neither", where)
	}
	if len(p.Bands) > 0 && p.Destinations != nil {
		return fmt.Errorf("%s: a price has bands or destinations, not both; price each destination's peak rate as its own destination, or split the meter", where)
	}
	names := make(map[string]bool)
	for i := range p.Bands {
		b := &p.Bands[i]
		at := fmt.Sprintf("%s.bands[%d]", where, i)
		if b.Name == "" || b.Name == RateStandard {
			return fmt.Errorf("%s.name: %q; give each band a name other than %q", at, b.Name, RateStandard)
		}
		if names[b.Name] {
			return fmt.Errorf("%s.name: band %q appears twice", at, b.Name)
		}
		names[b.Name] = true
		if b.UnitPrice.IsNegative() {
			return fmt.Errorf("%s.unitPrice: %s is negative", at, b.UnitPrice)
		}
		if len(b.Days) == 0 {
			b.days = [7]bool{true, true, true, true, true, true, true}
		}
		for _, d := range b.Days {
			wd, ok := weekdays[strings.ToLower(d)]
			if !ok {
				return fmt.Errorf("%s.days: %q is not one of mon, tue, wed, thu, fri, sat, sun", at, d)
			}
			b.days[wd] = true
		}
		var err error
		if b.from, err = parseClock(b.From, 0); err != nil {
			return fmt.Errorf("%s.from: %w", at, err)
		}
		if b.to, err = parseClock(b.To, 24*60); err != nil {
			return fmt.Errorf("%s.to: %w", at, err)
		}
		if b.from >= b.to {
			return fmt.Errorf("%s: from %s is not before to %s; split a band across midnight into two bands", at, b.From, b.To)
		}
	}
	if d := p.Destinations; d != nil {
		if d.Dimension == "" {
			return fmt.Errorf("%s.destinations.dimension: missing; name the dimension holding the number (e.g. called)", where)
		}
		if len(d.Prefixes) == 0 {
			return fmt.Errorf("%s.destinations.prefixes: none", where)
		}
		d.byPrefix = make(map[string]*DestinationRate, len(d.Prefixes))
		zones := make(map[string]*DestinationRate)
		for i := range d.Prefixes {
			r := &d.Prefixes[i]
			at := fmt.Sprintf("%s.destinations.prefixes[%d]", where, i)
			switch {
			case r.Prefix == "":
				return fmt.Errorf("%s.prefix: empty; unmatched numbers take the price's unitPrice", at)
			case d.byPrefix[r.Prefix] != nil:
				return fmt.Errorf("%s.prefix: %q appears twice", at, r.Prefix)
			case r.Name == "" || r.Name == RateOther:
				return fmt.Errorf("%s.name: %q; name the destination (other than %q)", at, r.Name, RateOther)
			case r.UnitPrice.IsNegative():
				return fmt.Errorf("%s.unitPrice: %s is negative", at, r.UnitPrice)
			case r.EventFee != nil && r.EventFee.IsNegative():
				return fmt.Errorf("%s.eventFee: %s is negative", at, r.EventFee)
			}
			if z := zones[r.Name]; z != nil && (!z.UnitPrice.Equal(r.UnitPrice) || !optEqual(z.EventFee, r.EventFee)) {
				return fmt.Errorf("%s: destination %q already has other rates (prefix %s); prefixes of one destination share its rates", at, r.Name, z.Prefix)
			}
			zones[r.Name] = r
			d.byPrefix[r.Prefix] = r
			d.maxLen = max(d.maxLen, len(r.Prefix))
		}
	}
	return nil
}

func optEqual(a, b *decimal.Decimal) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// parseClock reads "HH:MM" as minutes since midnight; empty is def.
func parseClock(s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	if s == "24:00" {
		return 24 * 60, nil
	}
	t, err := time.Parse("15:04", s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a time of day HH:MM", s)
	}
	return t.Hour()*60 + t.Minute(), nil
}

// EventCharge is one event's charge under a per-event price.
type EventCharge struct {
	// Rate is the band or destination name the event is priced at; empty
	// when the price has neither.
	Rate string
	// Amount is the event's charge, unrounded.
	Amount decimal.Decimal
}

// RateEvent prices one event of meter: units is what it adds to the meter
// (its value, or 1 for a count), at its start time; dim returns one of the
// event's dimensions. The price must be per event (see PerEvent).
func (pl *Plan) RateEvent(meter string, units decimal.Decimal, at time.Time, dim func(key string) (string, bool)) (EventCharge, error) {
	price, ok := pl.Meters[meter]
	if !ok {
		return EventCharge{}, fmt.Errorf("plan %s: meter %q is not priced", pl.ID, meter)
	}
	rate, unitPrice, fee := "", price.UnitPrice, price.EventFee
	if price.Model == Percentage {
		unitPrice = price.Percentage
	}
	switch {
	case len(price.Bands) > 0:
		rate = RateStandard
		local := at.In(pl.location())
		minute := local.Hour()*60 + local.Minute()
		for i := range price.Bands {
			b := &price.Bands[i]
			if b.days[local.Weekday()] && minute >= b.from && minute < b.to {
				rate, unitPrice = b.Name, b.UnitPrice
				break
			}
		}
	case price.Destinations != nil:
		rate = RateOther
		number, _ := dim(price.Destinations.Dimension)
		if r := price.Destinations.match(number); r != nil {
			rate, unitPrice = r.Name, r.UnitPrice
			if r.EventFee != nil {
				fee = *r.EventFee
			}
		}
	}
	amount := price.unitsAt(units, unitPrice).Add(fee)
	if price.MinPerEvent != nil && amount.LessThan(*price.MinPerEvent) {
		amount = *price.MinPerEvent
	}
	if price.MaxPerEvent != nil && amount.GreaterThan(*price.MaxPerEvent) {
		amount = *price.MaxPerEvent
	}
	return EventCharge{Rate: rate, Amount: amount}, nil
}

// match returns the rate of the longest prefix of number, or nil.
func (d *Destinations) match(number string) *DestinationRate {
	for n := min(len(number), d.maxLen); n > 0; n-- {
		if r := d.byPrefix[number[:n]]; r != nil {
			return r
		}
	}
	return nil
}

// rateOf returns the unit price and event fee of a rate name.
func (p *Price) rateOf(rate string) (unitPrice, fee decimal.Decimal) {
	unitPrice, fee = p.UnitPrice, p.EventFee
	if p.Model == Percentage {
		unitPrice = p.Percentage
	}
	for _, b := range p.Bands {
		if b.Name == rate {
			return b.UnitPrice, fee
		}
	}
	if p.Destinations != nil {
		for _, r := range p.Destinations.Prefixes {
			if r.Name == rate {
				if r.EventFee != nil {
					fee = *r.EventFee
				}
				return r.UnitPrice, fee
			}
		}
	}
	return unitPrice, fee
}

// WindowUsage is what a window of a per-event price holds: its rate, its
// units and events, and the sum of their charges.
type WindowUsage struct {
	Rate   string
	Units  decimal.Decimal
	Events uint64
	Amount decimal.Decimal
}

// IncrementEvents is the charge of a window of a per-event price that moved
// the period's sum of event charges from before to after: the rounded sum
// after minus the rounded sum before, so that increments add up to the
// rounded period total. Its lines explain the window w.
func (pl *Plan) IncrementEvents(meter string, w WindowUsage, before, after decimal.Decimal) (Charge, error) {
	price, ok := pl.Meters[meter]
	if !ok {
		return Charge{}, fmt.Errorf("plan %s: meter %q is not priced", pl.ID, meter)
	}
	unitPrice, fee := price.rateOf(w.Rate)
	label := "per unit"
	switch {
	case price.Model == Percentage:
		label = "percentage"
	case w.Rate != "":
		label = "rate " + w.Rate
	}
	lines := []Line{{Description: label + price.perLabel(), Units: w.Units, UnitPrice: unitPrice, Amount: price.unitsAt(w.Units, unitPrice)}}
	events := decimal.NewFromUint64(w.Events)
	if !fee.IsZero() {
		lines = append(lines, Line{Description: "event fee", Units: events, UnitPrice: fee, Amount: events.Mul(fee)})
	}
	explained := decimal.Zero
	for _, l := range lines {
		explained = explained.Add(l.Amount)
	}
	if adj := w.Amount.Sub(explained); !adj.IsZero() {
		lines = append(lines, Line{Description: "per-event minimum/maximum", Units: decimal.NewFromInt(1), UnitPrice: adj, Amount: adj})
	}
	return Charge{
		Plan:      pl.ID,
		Amount:    pl.round(after).Sub(pl.round(before)),
		Currency:  pl.Currency,
		UnitPrice: unitPrice,
		Lines:     lines,
	}, nil
}

// location is the plan's timezone (UTC when unset).
func (pl *Plan) location() *time.Location {
	if pl.loc == nil {
		return time.UTC
	}
	return pl.loc
}
