package engine

import (
	"fmt"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Aggregation names how a meter folds the values of a window.
type Aggregation string

const (
	AggSum    Aggregation = "SUM"
	AggCount  Aggregation = "COUNT"
	AggMin    Aggregation = "MIN"
	AggMax    Aggregation = "MAX"
	AggAvg    Aggregation = "AVG"
	AggLatest Aggregation = "LATEST" // by event time; ties by (partition, offset)
	// AggUniqueCount counts distinct values exactly: billing-grade.
	AggUniqueCount Aggregation = "UNIQUE_COUNT"
	// AggUniqueCountApprox estimates distinct values with HyperLogLog
	// (~0.8% standard error, ~16 KiB per window at most): analytics only.
	AggUniqueCountApprox Aggregation = "UNIQUE_COUNT_APPROX_HLL"
)

// Meter configures what a meter measures. Zero values take documented
// defaults in Compile.
type Meter struct {
	Name string `yaml:"name" json:"name"`
	// EventTypes are the event meter/type values the meter reads; default
	// [Name]. Several meters may read the same event type.
	EventTypes []string `yaml:"eventTypes" json:"eventTypes"`
	// ValuePath locates the value: "value" (default: the event's value),
	// "data.<field>" (a CloudEvent data field) or "dims.<key>" (a dimension).
	ValuePath   string      `yaml:"valuePath" json:"valuePath"`
	Aggregation Aggregation `yaml:"aggregation" json:"aggregation"`
	// GroupBy lists the dimensions that split a customer's usage; ["*"]
	// groups by every dimension; empty means one aggregate per customer.
	GroupBy []string `yaml:"groupBy" json:"groupBy"`
	// Window is MINUTE, HOUR, DAY, MONTH (calendar, UTC) or a duration that
	// divides a day (e.g. 5m); default the engine's window.
	Window string `yaml:"window" json:"window"`
	// Align is UTC (default) or customer: windows then follow the
	// customer's time zone (see Customer).
	Align string `yaml:"align" json:"align"`
	Unit  string `yaml:"unit" json:"unit"`
	// Decimal allows fractional values; otherwise values must be integers
	// (bytes, seconds, messages), and a fractional one is dead-lettered.
	Decimal bool `yaml:"decimal" json:"decimal"`
	// NonNegative refuses negative values (durations, bytes): such records
	// are dead-lettered as invalid_field instead of being taken as
	// adjustments.
	NonNegative bool `yaml:"nonNegative" json:"nonNegative"`
	// Increments rounds each event's value up before aggregation, CGRateS
	// style: first is charged whole, the rest in steps of next (60/60, 30/6,
	// 1/1 for call seconds). Zero values disable it.
	Increments Increments `yaml:"increments" json:"increments"`
	// MaxGroupsPerKey bounds the dimension groups per customer and window;
	// records beyond it are dead-lettered with reason cardinality. Default 1000.
	MaxGroupsPerKey int `yaml:"maxGroupsPerKey" json:"maxGroupsPerKey"`
}

// Increments is a per-event rounding: a positive value below First becomes
// First; above it, First plus the rest rounded up to a multiple of Next.
type Increments struct {
	First decimal.Decimal `yaml:"first" json:"first"`
	Next  decimal.Decimal `yaml:"next" json:"next"`
}

func (in Increments) enabled() bool { return in.First.IsPositive() || in.Next.IsPositive() }

// apply rounds v up; zero and negative values (adjustments) are unchanged.
func (in Increments) apply(v decimal.Decimal) decimal.Decimal {
	if !v.IsPositive() {
		return v
	}
	if v.LessThanOrEqual(in.First) {
		return in.First
	}
	rest := v.Sub(in.First)
	if in.Next.IsPositive() {
		rest = rest.Div(in.Next).Ceil().Mul(in.Next)
	}
	return in.First.Add(rest)
}

// DefaultMaxGroupsPerKey bounds group cardinality when a meter does not.
const DefaultMaxGroupsPerKey = 1000

// windowSpec computes a meter's tumbling windows, in UTC or in a customer's
// time zone.
type windowSpec struct {
	sizeNs int64 // fixed-size windows; 0 for calendar months
	month  bool
	name   string
}

const dayNs = int64(24 * time.Hour)

// start returns the start of the window holding tNs in loc. Days and months
// follow the local calendar (a DST day lasts 23 or 25 hours); shorter
// windows follow the local wall clock (for whole-hour offsets, the same
// instants as in UTC).
func (w windowSpec) start(tNs int64, loc *time.Location) int64 {
	if loc == time.UTC && !w.month {
		return floorDiv(tNs, w.sizeNs)
	}
	t := time.Unix(0, tNs).In(loc)
	switch {
	case w.month:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, loc).UnixNano()
	case w.sizeNs == dayNs:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc).UnixNano()
	default:
		_, offset := t.Zone()
		offsetNs := int64(offset) * int64(time.Second)
		return floorDiv(tNs+offsetNs, w.sizeNs) - offsetNs
	}
}

// end returns the end of the window starting at startNs in loc.
func (w windowSpec) end(startNs int64, loc *time.Location) int64 {
	switch {
	case w.month:
		return time.Unix(0, startNs).In(loc).AddDate(0, 1, 0).UnixNano()
	case w.sizeNs == dayNs && loc != time.UTC:
		return time.Unix(0, startNs).In(loc).AddDate(0, 0, 1).UnixNano()
	default:
		return startNs + w.sizeNs
	}
}

func parseWindow(s string, fallback time.Duration) (windowSpec, error) {
	switch strings.ToUpper(s) {
	case "":
		s = fallback.String()
	case "MINUTE":
		return windowSpec{sizeNs: int64(time.Minute), name: "MINUTE"}, nil
	case "HOUR":
		return windowSpec{sizeNs: int64(time.Hour), name: "HOUR"}, nil
	case "DAY":
		return windowSpec{sizeNs: int64(24 * time.Hour), name: "DAY"}, nil
	case "MONTH":
		return windowSpec{month: true, name: "MONTH"}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second || d > 24*time.Hour || (24*time.Hour)%d != 0 {
		return windowSpec{}, fmt.Errorf("%q is not MINUTE, HOUR, DAY, MONTH or a duration of at least 1s that divides a day", s)
	}
	return windowSpec{sizeNs: int64(d), name: d.String()}, nil
}

// meterSpec is a compiled Meter.
type meterSpec struct {
	Meter
	index      int
	window     windowSpec
	valueKind  valueKind
	valueField string // the field or dim key of ValuePath
	groupAll   bool
	local      bool // windows aligned in the customer's time zone
	needsValue bool
	textValue  bool // unique counts take the value as text
}

type valueKind int

const (
	valueTop valueKind = iota
	valueData
	valueDim
)

// Meters is a compiled, validated meter catalogue. Immutable; safe for
// concurrent use.
type Meters struct {
	list   []*meterSpec
	byType map[string][]*meterSpec
}

// CompileMeters validates meters and indexes them by event type. Errors name
// the meter and field.
func CompileMeters(meters []Meter, defaultWindow time.Duration) (*Meters, error) {
	if len(meters) == 0 {
		return nil, fmt.Errorf("meters: none configured")
	}
	m := &Meters{byType: make(map[string][]*meterSpec)}
	names := make(map[string]bool)
	for i, cfg := range meters {
		if cfg.Name == "" {
			return nil, fmt.Errorf("meters[%d].name: empty", i)
		}
		if err := checkIdentifier("meter name", cfg.Name); err != nil {
			return nil, fmt.Errorf("meters[%d].name: %v", i, err)
		}
		if names[cfg.Name] {
			return nil, fmt.Errorf("meters.%s: defined twice", cfg.Name)
		}
		names[cfg.Name] = true
		spec := &meterSpec{Meter: cfg, index: i}
		if len(spec.EventTypes) == 0 {
			spec.EventTypes = []string{cfg.Name}
		}
		for _, t := range spec.EventTypes {
			if t == GrantCreated || strings.HasPrefix(t, subscriptionTypePrefix) || strings.HasPrefix(t, slaTypePrefix) {
				return nil, fmt.Errorf("meters.%s.eventTypes: %q is the type of Tally's own events (grant.created, subscription.*, sla.*); name the meter or its event type otherwise", cfg.Name, t)
			}
		}
		if spec.Aggregation == "" {
			spec.Aggregation = AggSum
		}
		spec.Aggregation = Aggregation(strings.ToUpper(string(spec.Aggregation)))
		switch spec.Aggregation {
		case AggSum, AggMin, AggMax, AggAvg, AggLatest:
			spec.needsValue = true
		case AggCount:
		case AggUniqueCount, AggUniqueCountApprox:
			spec.needsValue, spec.textValue = true, true
		default:
			return nil, fmt.Errorf("meters.%s.aggregation: %q is not one of SUM, COUNT, MIN, MAX, AVG, LATEST, UNIQUE_COUNT, UNIQUE_COUNT_APPROX_HLL", cfg.Name, cfg.Aggregation)
		}
		switch path := spec.ValuePath; {
		case path == "" || path == "value":
			spec.valueKind = valueTop
		case strings.HasPrefix(path, "data.") && len(path) > 5:
			spec.valueKind, spec.valueField = valueData, path[5:]
		case strings.HasPrefix(path, "dims.") && len(path) > 5:
			spec.valueKind, spec.valueField = valueDim, path[5:]
		default:
			return nil, fmt.Errorf("meters.%s.valuePath: %q is not value, data.<field> or dims.<key>", cfg.Name, path)
		}
		for _, g := range spec.GroupBy {
			if g == "*" {
				if len(spec.GroupBy) != 1 {
					return nil, fmt.Errorf("meters.%s.groupBy: \"*\" (every dimension) cannot be combined with named ones", cfg.Name)
				}
				spec.groupAll = true
			} else if g == "" {
				return nil, fmt.Errorf("meters.%s.groupBy: empty dimension name", cfg.Name)
			}
		}
		var err error
		if spec.window, err = parseWindow(cfg.Window, defaultWindow); err != nil {
			return nil, fmt.Errorf("meters.%s.window: %v", cfg.Name, err)
		}
		if in := cfg.Increments; in.enabled() {
			switch {
			case in.First.IsNegative() || in.Next.IsNegative():
				return nil, fmt.Errorf("meters.%s.increments: first %s and next %s must not be negative", cfg.Name, in.First, in.Next)
			case !in.Next.IsPositive():
				return nil, fmt.Errorf("meters.%s.increments.next: missing; e.g. {first: 60, next: 60} bills started minutes", cfg.Name)
			case spec.Aggregation != AggSum:
				return nil, fmt.Errorf("meters.%s.increments: only SUM meters (durations) round per event, not %s", cfg.Name, spec.Aggregation)
			}
		}
		switch strings.ToUpper(cfg.Align) {
		case "", "UTC":
		case "CUSTOMER":
			spec.local = true
		default:
			return nil, fmt.Errorf("meters.%s.align: %q is not UTC or customer", cfg.Name, cfg.Align)
		}
		if spec.MaxGroupsPerKey == 0 {
			spec.MaxGroupsPerKey = DefaultMaxGroupsPerKey
		}
		if spec.MaxGroupsPerKey < 1 {
			return nil, fmt.Errorf("meters.%s.maxGroupsPerKey: %d must be at least 1", cfg.Name, cfg.MaxGroupsPerKey)
		}
		m.list = append(m.list, spec)
		for _, t := range spec.EventTypes {
			m.byType[t] = append(m.byType[t], spec)
		}
	}
	return m, nil
}

// additive reports whether a meter's windows add up to its period total, so
// that it can be charged incrementally.
func (m *meterSpec) additive() bool {
	return m.Aggregation == AggSum || m.Aggregation == AggCount
}

// Additive reports whether the named meter's windows add up over a billing
// period (SUM and COUNT); only those can carry tiers, allowances and other
// period-to-date pricing.
func (m *Meters) Additive(name string) bool {
	s := m.byName(name)
	return s != nil && s.additive()
}

// GroupBy returns the named meter's group-by dimensions.
func (m *Meters) GroupBy(name string) []string {
	if s := m.byName(name); s != nil {
		return s.GroupBy
	}
	return nil
}

// Has reports whether a meter is configured.
func (m *Meters) Has(name string) bool { return m.byName(name) != nil }

// Names returns the meter names in configuration order.
func (m *Meters) Names() []string {
	out := make([]string, len(m.list))
	for i, s := range m.list {
		out[i] = s.Name
	}
	return out
}

// unitOf is meter name's unit ("" for none or an unknown meter).
func (m *Meters) unitOf(name string) string {
	if s := m.byName(name); s != nil {
		return s.Unit
	}
	return ""
}

func (m *Meters) byName(name string) *meterSpec {
	for _, s := range m.list {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// longestWindow is the longest window of any meter (31 days for months),
// plus a day for customer zones: how far a window may reach past its
// billing period.
func (m *Meters) longestWindow() time.Duration {
	var longest int64
	for _, spec := range m.list {
		size := spec.window.sizeNs
		if spec.window.month {
			size = 31 * dayNs
		}
		longest = max(longest, size)
	}
	return time.Duration(longest + dayNs)
}

// windowLoc is where meter m's windows are aligned for customer cust.
func (m *meterSpec) windowLoc(cust customerSpec) *time.Location {
	if m.local {
		return cust.loc
	}
	return time.UTC
}

// settleEnd is when every window of meter m charged in the billing period
// ending at periodEndNs has ended. The rule: a window is charged in the
// billing period its start falls in, whole, even when it ends after the
// period does (a UTC day for a customer in another zone, a calendar month
// for a customer whose anchor day is not 1). So the period's state, its
// windows' lateness and finalization, and its fee row all run until the
// end of the last window that starts in it, not until the period's end.
// For windows that nest in periods the two are equal. windowLoc is
// m.windowLoc of the customer.
func (m *meterSpec) settleEnd(periodEndNs int64, windowLoc *time.Location) int64 {
	last := m.window.start(periodEndNs-1, windowLoc)
	return max(periodEndNs, m.window.end(last, windowLoc))
}

// periodOfMonth is cust's billing period starting in month (its year and
// month as written, whatever its zone), or, for a zero month, the one
// holding atNs.
func periodOfMonth(cust customerSpec, month time.Time, atNs int64) (startNs, endNs int64) {
	if !month.IsZero() {
		atNs = time.Date(month.Year(), month.Month(), cust.anchorDay, 0, 0, 0, 0, cust.loc).UnixNano()
	}
	return billingPeriod(atNs, cust.loc, cust.anchorDay)
}

// billingPeriod returns the billing period holding tNs: from the anchor day
// of one month to the anchor day of the next, at local midnight in loc.
func billingPeriod(tNs int64, loc *time.Location, anchorDay int) (startNs, endNs int64) {
	t := time.Unix(0, tNs).In(loc)
	year, month := t.Year(), t.Month()
	if t.Day() < anchorDay {
		month--
	}
	start := time.Date(year, month, anchorDay, 0, 0, 0, 0, loc)
	return start.UnixNano(), start.AddDate(0, 1, 0).UnixNano()
}
