package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
	"github.com/valyala/fastjson"
)

// Bounds on what one event may carry. Records beyond them are dead-lettered,
// never truncated.
const (
	maxRecordBytes     = 1 << 20 // one record's JSON
	maxIdentifierBytes = 256     // id, source, customer, meter, dim values
	maxDimKeyBytes     = 128
	maxDims            = 32
	// maxValueFractionDigits is the scale of ClickHouse's Decimal(38, 10):
	// a value with more fractional digits could not be stored exactly.
	maxValueFractionDigits = 10
	// maxValueIntegerDigits keeps sums of many values inside Decimal(38, 10).
	maxValueIntegerDigits = 20
)

// decodeError is a record that cannot become an Event, with its reason.
type decodeError struct {
	reason Reason
	detail string
}

func (e *decodeError) Error() string { return string(e.reason) + ": " + e.detail }

func fail(reason Reason, format string, args ...any) error {
	return &decodeError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// wireEvent is the union of the plain form and CloudEvents structured mode.
type wireEvent struct {
	// Plain form.
	ID       string
	Customer string
	Meter    string
	// Time is the time field's text; TimeNs is set instead (and Time left
	// empty) when the fast path parsed it.
	Time     string
	TimeNs   int64
	hasTime  bool
	Value    json.RawMessage
	valueBuf [32]byte // Value's storage when it fits
	Dims     []Dim
	// Plan is the plan of a plain-form subscription event.
	Plan string
	// Expires is the expiry of a plain-form grant event, and sla the
	// fields of a plain-form SLA event, kept raw: they are checked only for
	// those events (a usage record may carry the same names as dimensions
	// of any type, ignored).
	Expires json.RawMessage
	// Amount and Currency are a plain-form money grant's.
	Amount, Currency json.RawMessage
	sla              wireSLA
	// CloudEvents: type is the meter, subject the customer, data the payload.
	SpecVersion string
	Source      string
	Type        string
	Subject     string
	Data        map[string]json.RawMessage
	// DataDims are the string fields of data other than value: a
	// CloudEvent's dimensions.
	DataDims []Dim
}

// parseWire reads a record into w with fastjson (validated strictly first,
// as encoding/json would, then parsed with a pooled parser): about 3 times
// faster than encoding/json into a struct and with few allocations (see
// bench/RESULTS.md). Field types are checked as encoding/json did; a key
// appearing twice is refused, since which one counts would be a guess.
func (d *Decoder) parseWire(raw []byte, w *wireEvent) error {
	if err := fastjson.ValidateBytes(raw); err != nil {
		return fail(ReasonInvalidJSON, "%v", err)
	}
	p := d.parsers.Get()
	defer d.parsers.Put(p)
	v, err := p.ParseBytes(raw)
	if err != nil {
		return fail(ReasonInvalidJSON, "%v", err)
	}
	o, err := v.Object()
	if err != nil {
		return fail(ReasonInvalidField, "record is a JSON %s, not an object", v.Type())
	}
	var keys [16][]byte
	n := 0
	var ferr error
	str := func(key []byte, v *fastjson.Value, dst *string) {
		switch v.Type() {
		case fastjson.TypeString:
			*dst = string(v.GetStringBytes())
		case fastjson.TypeNull:
		default:
			ferr = fail(ReasonInvalidField, "field %s: %s where string is expected", key, v.Type())
		}
	}
	// eventType is str for the fields naming an event type: the few types
	// meters read are interned, so they cost no string per record.
	eventType := func(key []byte, v *fastjson.Value, dst *string) {
		if v.Type() == fastjson.TypeString {
			if t, ok := d.types[string(v.GetStringBytes())]; ok {
				*dst = t
				return
			}
		}
		str(key, v, dst)
	}
	o.Visit(func(key []byte, v *fastjson.Value) {
		if ferr != nil {
			return
		}
		for _, k := range keys[:n] {
			if bytes.Equal(k, key) {
				ferr = fail(ReasonInvalidField, "field %q appears twice; which one counts would be a guess", key)
				return
			}
		}
		if n < len(keys) {
			keys[n] = key
			n++
		}
		switch string(key) {
		case "id":
			str(key, v, &w.ID)
		case "customer":
			str(key, v, &w.Customer)
		case "meter":
			eventType(key, v, &w.Meter)
		case "time":
			if v.Type() == fastjson.TypeString {
				if ns, ok := parseTimeFast(v.GetStringBytes()); ok {
					w.TimeNs, w.hasTime = ns, true
					return
				}
			}
			str(key, v, &w.Time)
		case "plan":
			str(key, v, &w.Plan)
		case "expires":
			w.Expires = v.MarshalTo(nil)
		case "amount":
			w.Amount = v.MarshalTo(nil)
		case "currency":
			w.Currency = v.MarshalTo(nil)
		case "ok":
			w.sla.OK = v.MarshalTo(nil)
		case "latency_ms":
			w.sla.LatencyMs = v.MarshalTo(nil)
		case "outage":
			w.sla.Outage = v.MarshalTo(nil)
		case "end":
			w.sla.End = v.MarshalTo(nil)
		case "issue":
			w.sla.Issue = v.MarshalTo(nil)
		case "status":
			w.sla.Status = v.MarshalTo(nil)
		case "service":
			w.sla.Service = v.MarshalTo(nil)
		case "specversion":
			str(key, v, &w.SpecVersion)
		case "source":
			str(key, v, &w.Source)
		case "type":
			eventType(key, v, &w.Type)
		case "subject":
			str(key, v, &w.Subject)
		case "value":
			w.Value = v.MarshalTo(w.valueBuf[:0])
		case "dims":
			w.Dims, ferr = wireDims(v)
		case "data":
			w.Data, w.DataDims, ferr = wireData(v)
		}
	})
	return ferr
}

// wireDims reads the plain form's dims: an object of strings.
func wireDims(v *fastjson.Value) ([]Dim, error) {
	if v.Type() == fastjson.TypeNull {
		return nil, nil
	}
	o, err := v.Object()
	if err != nil {
		return nil, fail(ReasonInvalidField, "field dims: %s where object is expected", v.Type())
	}
	if o.Len() > maxDims {
		return nil, fail(ReasonInvalidField, "%d dims, limit %d", o.Len(), maxDims)
	}
	if o.Len() == 0 {
		return nil, nil
	}
	dims := make([]Dim, 0, o.Len())
	o.Visit(func(key []byte, v *fastjson.Value) {
		if err != nil {
			return
		}
		if v.Type() != fastjson.TypeString {
			err = fail(ReasonInvalidField, "dim %q is not a string", key)
			return
		}
		dims = append(dims, Dim{Key: string(key), Value: string(v.GetStringBytes())})
	})
	if err != nil {
		return nil, err
	}
	return sortedDims(dims)
}

// wireData keeps a CloudEvent's data fields as raw JSON, and its string
// fields other than value as dimensions (fields of other types are not
// dimensions).
func wireData(v *fastjson.Value) (map[string]json.RawMessage, []Dim, error) {
	if v.Type() == fastjson.TypeNull {
		return nil, nil, nil
	}
	o, err := v.Object()
	if err != nil {
		return nil, nil, fail(ReasonInvalidField, "field data: %s where object is expected", v.Type())
	}
	data := make(map[string]json.RawMessage, o.Len())
	var dims []Dim
	o.Visit(func(key []byte, v *fastjson.Value) {
		data[string(key)] = v.MarshalTo(nil)
		if v.Type() == fastjson.TypeString && string(key) != "value" {
			dims = append(dims, Dim{Key: string(key), Value: string(v.GetStringBytes())})
		}
	})
	if len(dims) > maxDims {
		return nil, nil, fail(ReasonInvalidField, "%d dims, limit %d", len(dims), maxDims)
	}
	if dims, err = sortedDims(dims); err != nil {
		return nil, nil, err
	}
	return data, dims, nil
}

// Decoder turns raw JSON records into Events, one per meter that reads the
// record's event type. It is safe for concurrent use.
type Decoder struct {
	meters *Meters
	// types interns the event types meters read.
	types   map[string]string
	parsers fastjson.ParserPool
	// wires holds *wireEvent scratch (parseWire's closures make one
	// escape; reusing them saves an allocation per record).
	wires sync.Pool
	// maxFutureSkew refuses records timed further than this past the wall
	// clock; 0 disables.
	maxFutureSkew time.Duration
	// minEventTimeNs refuses records timed before it (the horizon); 0 disables.
	minEventTimeNs int64
	now            func() time.Time
	// csv reads records that are not JSON objects as CSV lines; nil: none.
	csv *CSVDecoder
}

// DecoderOption configures a Decoder.
type DecoderOption func(*Decoder)

// WithMaxFutureSkew dead-letters records timed more than d after the wall
// clock (reason time_out_of_range). Default: off.
func WithMaxFutureSkew(d time.Duration) DecoderOption {
	return func(dec *Decoder) { dec.maxFutureSkew = d }
}

// WithHorizon dead-letters records timed before t (reason time_out_of_range).
func WithHorizon(t time.Time) DecoderOption {
	return func(dec *Decoder) {
		if !t.IsZero() {
			dec.minEventTimeNs = t.UnixNano()
		}
	}
}

// skewBase is when a record stamped at stamped is measured from: the
// earlier of that and now.
func skewBase(now, stamped time.Time) time.Time {
	if !stamped.IsZero() && stamped.Before(now) {
		return stamped
	}
	return now
}

// WithClock sets the wall clock used by WithMaxFutureSkew (tests).
func WithClock(now func() time.Time) DecoderOption {
	return func(dec *Decoder) { dec.now = now }
}

// NewDecoder returns a decoder for meters.
func NewDecoder(meters *Meters, options ...DecoderOption) *Decoder {
	d := &Decoder{meters: meters, now: time.Now, types: make(map[string]string, len(meters.byType))}
	for t := range meters.byType {
		d.types[t] = t
	}
	d.wires.New = func() any { return new(wireEvent) }
	for _, o := range options {
		o(d)
	}
	return d
}

// Decode parses one record and appends one Event per meter reading its type
// to out. A record is taken whole or refused whole: on failure nothing is
// appended and the error is a *decodeError carrying the dead-letter reason.
func (d *Decoder) Decode(raw []byte, out []Event) ([]Event, error) {
	return d.DecodeAt(raw, out, time.Time{})
}

// DecodeAt is Decode for a record stamped at stamped (Record.Timestamp):
// WithMaxFutureSkew measures from the earlier of it and the wall clock, so
// the decision does not depend on when the record is read (an audit reads
// it later) while a producer whose clock runs ahead cannot widen it. A zero
// stamped uses the wall clock alone.
func (d *Decoder) DecodeAt(raw []byte, out []Event, stamped time.Time) ([]Event, error) {
	return d.DecodeInterned(raw, out, stamped, nil)
}

// DecodeInterned is DecodeAt with the customers, dimensions and group keys
// of its events interned by in (nil: none), for a reader that decodes many
// records of the same customers.
func (d *Decoder) DecodeInterned(raw []byte, out []Event, stamped time.Time, in *Interner) ([]Event, error) {
	if len(raw) > maxRecordBytes {
		return out, fail(ReasonTooLarge, "record is %d bytes, limit %d", len(raw), maxRecordBytes)
	}
	if !utf8.Valid(raw) {
		return out, fail(ReasonInvalidField, "record is not valid UTF-8")
	}
	if d.csv != nil && isCSV(raw) {
		record, header, err := d.csv.toJSON(raw)
		if err != nil || header {
			return out, err // a header line: no event
		}
		raw = record
	}
	w := d.wires.Get().(*wireEvent)
	*w = wireEvent{}
	defer d.wires.Put(w)
	if !d.scanPlain(raw, w, in) {
		*w = wireEvent{}
		if err := d.parseWire(raw, w); err != nil {
			return out, err
		}
	}
	var base Event
	var rawValue json.RawMessage
	var dims []Dim
	var err error
	var eventType string
	if w.SpecVersion != "" {
		if w.SpecVersion != "1.0" {
			return out, fail(ReasonInvalidField, "specversion %q is not 1.0", w.SpecVersion)
		}
		base.ID, base.Source, eventType, base.Customer = w.ID, w.Source, w.Type, w.Subject
		if w.Source == "" {
			return out, fail(ReasonMissingField, "cloudevent has no source")
		}
		if w.Data == nil {
			return out, fail(ReasonMissingField, "cloudevent has no data")
		}
		rawValue = w.Data["value"]
		dims = w.DataDims
	} else {
		base.ID, eventType, base.Customer = w.ID, w.Meter, w.Customer
		if eventType == "" && (strings.HasPrefix(w.Type, subscriptionTypePrefix) || strings.HasPrefix(w.Type, slaTypePrefix)) {
			eventType = w.Type
		}
		if w.Type == GrantCreated {
			eventType = GrantCreated // its meter field names the meter granted
		}
		rawValue = w.Value
		dims = w.Dims
	}
	for _, f := range [...]struct{ name, value string }{
		{"id", base.ID}, {"customer", base.Customer}, {"meter", eventType},
	} {
		if f.name == "customer" && f.value == "" && strings.HasPrefix(eventType, slaTypePrefix) && w.slaService() != nil {
			continue // a shared service's event (decodeSLA)
		}
		if f.value == "" {
			return out, fail(ReasonMissingField, "no %s", f.name)
		}
		if err := checkIdentifier(f.name, f.value); err != nil {
			return out, err
		}
	}
	if err := checkIdentifier("source", base.Source); err != nil {
		return out, err
	}
	if w.hasTime {
		base.TimeNs = w.TimeNs
	} else if base.TimeNs, err = parseTime(w.Time); err != nil {
		return out, err
	}
	if d.minEventTimeNs != 0 && base.TimeNs < d.minEventTimeNs {
		return out, fail(ReasonTimeRange, "time %s is before the horizon %s", formatTimeNs(base.TimeNs), time.Unix(0, d.minEventTimeNs).UTC().Format(time.RFC3339))
	}
	if d.maxFutureSkew > 0 && base.TimeNs > skewBase(d.now(), stamped).Add(d.maxFutureSkew).UnixNano() {
		return out, fail(ReasonTimeRange, "time %s is more than %s in the future", formatTimeNs(base.TimeNs), d.maxFutureSkew)
	}
	if strings.HasPrefix(eventType, subscriptionTypePrefix) {
		return d.decodeSubscription(base, eventType, w, out)
	}
	if eventType == GrantCreated {
		return d.decodeGrant(base, w, rawValue, out)
	}
	if strings.HasPrefix(eventType, slaTypePrefix) {
		return d.decodeSLA(base, eventType, w, out)
	}
	meters := d.meters.byType[eventType]
	if len(meters) == 0 {
		return out, fail(ReasonUnknownMeter, "no meter reads event type %q", eventType)
	}
	first := len(out)
	for _, m := range meters {
		ev := base
		ev.Meter, ev.meter = m.Name, m
		if m.needsValue {
			raw, ok := lookupValue(m, rawValue, w.Data, dims)
			if !ok {
				return out[:first], fail(ReasonMissingField, "meter %s: no value at %s", m.Name, valuePathName(m))
			}
			if m.textValue {
				if ev.Text, err = parseText(raw); err != nil {
					return out[:first], fail(ReasonInvalidField, "meter %s: %v", m.Name, err)
				}
			} else {
				if ev.value, ev.intValue, ev.isInt, err = parseValueInt(raw); err != nil {
					return out[:first], fmt.Errorf("meter %s: %w", m.Name, err)
				}
				if m.NonNegative && (ev.isInt && ev.intValue < 0 || !ev.isInt && ev.value.IsNegative()) {
					return out[:first], fail(ReasonInvalidField, "meter %s takes no negative values (nonNegative); got %s", m.Name, ev.Value())
				}
				if m.Increments.enabled() {
					v := m.Increments.apply(ev.Value())
					ev.value, ev.intValue, ev.isInt = v, 0, false
					if bi := v.BigInt(); v.IsInteger() && bi.IsInt64() {
						ev.value, ev.intValue, ev.isInt = decimal.Decimal{}, bi.Int64(), true
					}
				}
				if !m.Decimal && !ev.isInt && !ev.value.IsInteger() {
					return out[:first], fail(ReasonInvalidField, "meter %s takes integers (set decimal: true for fractional values); got %s", m.Name, ev.value)
				}
			}
		}
		ev.Dims = dims
		ev.GroupKey = groupKeyInterned(m, dims, in)
		out = append(out, ev)
	}
	return out, nil
}

// Subscription event types: provisioning systems publish them (plain form
// with "type" and "plan", or CloudEvents with data.plan), and from the
// event's time on the customer is on the plan, or on none once cancelled.
const (
	subscriptionTypePrefix = "subscription."
	SubscriptionCreated    = "subscription.created"
	SubscriptionChanged    = "subscription.plan_changed"
	SubscriptionCancelled  = "subscription.cancelled"
)

func (d *Decoder) decodeSubscription(ev Event, eventType string, w *wireEvent, out []Event) ([]Event, error) {
	plan := w.Plan
	if raw, ok := w.Data["plan"]; ok {
		if err := json.Unmarshal(raw, &plan); err != nil {
			return out, fail(ReasonInvalidField, "data.plan is not a string")
		}
	}
	switch eventType {
	case SubscriptionCreated, SubscriptionChanged:
		if plan == "" {
			return out, fail(ReasonMissingField, "%s has no plan", eventType)
		}
		if err := checkIdentifier("plan", plan); err != nil {
			return out, err
		}
	case SubscriptionCancelled:
		plan = ""
	default:
		return out, fail(ReasonInvalidField, "event type %q is not one of %s, %s, %s", eventType, SubscriptionCreated, SubscriptionChanged, SubscriptionCancelled)
	}
	ev.Subscription, ev.Plan, ev.Meter = true, plan, eventType
	return append(out, ev), nil
}

func valuePathName(m *meterSpec) string {
	if m.ValuePath == "" {
		return "value"
	}
	return m.ValuePath
}

// lookupValue returns the raw JSON (or, for dims, the JSON string) of a
// meter's value.
func lookupValue(m *meterSpec, top json.RawMessage, data map[string]json.RawMessage, dims []Dim) (json.RawMessage, bool) {
	switch m.valueKind {
	case valueData:
		v, ok := data[m.valueField]
		return v, ok && len(v) > 0 && string(v) != "null"
	case valueDim:
		for _, d := range dims {
			if d.Key == m.valueField {
				b, _ := json.Marshal(d.Value)
				return b, true
			}
		}
		return nil, false
	default:
		return top, len(top) > 0 && string(top) != "null"
	}
}

// parseText returns a string or number value as text, for unique counts.
func parseText(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", err
		}
		if len(s) > maxIdentifierBytes {
			return "", fmt.Errorf("value is %d bytes, limit %d", len(s), maxIdentifierBytes)
		}
		return s, nil
	}
	if _, err := decimal.NewFromString(string(raw)); err != nil || len(raw) > 64 {
		return "", fmt.Errorf("value %.30s is not a string or number", raw)
	}
	return string(raw), nil
}

// groupKeyInterned is groupKey without extra dimensions, interned by in.
func groupKeyInterned(m *meterSpec, dims []Dim, in *Interner) string {
	if in == nil {
		return groupKey(m, dims)
	}
	in.buf = appendGroupKey(in.buf[:0], m, dims)
	return in.bytes(in.buf)
}

// groupKey renders the meter's group-by dimensions canonically, with extra
// dimensions (the engine's own, such as the rate) added.
func groupKey(m *meterSpec, dims []Dim, extra ...Dim) string {
	var buf [128]byte
	return string(appendGroupKey(buf[:0], m, dims, extra...))
}

// appendGroupKey appends groupKey(m, dims, extra...) to b.
func appendGroupKey(b []byte, m *meterSpec, dims []Dim, extra ...Dim) []byte {
	if len(extra) == 0 && m.groupAll {
		return appendCanonicalGroupKey(b, dims)
	}
	if len(extra) == 0 && len(m.GroupBy) == 0 {
		return b
	}
	var stack [8]Dim
	picked := stack[:0]
	for _, d := range dims {
		if len(extra) > 0 && d.Key == RateDim {
			continue // reserved for the engine's rate (compileMeters refuses groupBy: [rate])
		}
		if m.groupAll || slices.Contains(m.GroupBy, d.Key) {
			picked = append(picked, d)
		}
	}
	picked = append(picked, extra...)
	slices.SortStableFunc(picked, func(a, b Dim) int { return strings.Compare(a.Key, b.Key) })
	return appendCanonicalGroupKey(b, picked)
}

func checkIdentifier(name, v string) error {
	if len(v) > maxIdentifierBytes {
		return fail(ReasonInvalidField, "%s is %d bytes, limit %d", name, len(v), maxIdentifierBytes)
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fail(ReasonInvalidField, "%s contains a NUL character", name)
	}
	return nil
}

func formatTimeNs(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

// parseTimeFast parses the usual form of an RFC 3339 time,
// YYYY-MM-DDTHH:MM:SS[.fraction]Z with 1 to 9 fraction digits, without
// allocating. Anything else (offsets, out-of-range fields) is left to
// parseTime (ok false), so it accepts only what parseTime accepts.
func parseTimeFast(b []byte) (int64, bool) {
	if len(b) < 20 || len(b) > 30 || b[len(b)-1] != 'Z' || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return 0, false
	}
	num := func(from, to int) (int, bool) {
		n := 0
		for _, c := range b[from:to] {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	year, ok1 := num(0, 4)
	month, ok2 := num(5, 7)
	day, ok3 := num(8, 10)
	hour, ok4 := num(11, 13)
	minute, ok5 := num(14, 16)
	sec, ok6 := num(17, 19)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || year < 1970 || year > 2200 || month < 1 || month > 12 || day < 1 ||
		day > daysIn(time.Month(month), year) || hour > 23 || minute > 59 || sec > 59 {
		return 0, false
	}
	frac := 0
	switch rest := b[19 : len(b)-1]; {
	case len(rest) == 0:
	case rest[0] == '.' && len(rest) >= 2 && len(rest) <= 10:
		f, ok := num(20, len(b)-1)
		if !ok {
			return 0, false
		}
		for range 10 - len(rest) {
			f *= 10
		}
		frac = f
	default:
		return 0, false
	}
	return time.Date(year, time.Month(month), day, hour, minute, sec, frac, time.UTC).UnixNano(), true
}

func daysIn(m time.Month, year int) int {
	return time.Date(year, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func parseTime(s string) (int64, error) {
	if s == "" {
		return 0, fail(ReasonMissingField, "no time")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, fail(ReasonInvalidField, "time %q is not RFC 3339", s)
	}
	// UnixNano is defined for years 1678..2262; the store's keys need >= 0.
	if t.Year() < 1970 || t.Year() > 2200 {
		return 0, fail(ReasonTimeRange, "time %s is outside 1970..2200", s)
	}
	return t.UnixNano(), nil
}

// parseValueInt is parseValue that returns the value as an int64 instead
// (and a zero decimal) when it is a plain integer of at most 18 digits (the
// common case: seconds, bytes, counts), parsed without the general decimal
// parser and without building a decimal.
func parseValueInt(raw json.RawMessage) (decimal.Decimal, int64, bool, error) {
	if v, ok := parseSmallInt(raw); ok {
		return decimal.Decimal{}, v, true, nil
	}
	v, err := parseValue(raw)
	return v, 0, false, err
}

func parseValue(raw json.RawMessage) (decimal.Decimal, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return decimal.Decimal{}, fail(ReasonMissingField, "no value")
	}
	text := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &text); err != nil {
			return decimal.Decimal{}, fail(ReasonInvalidField, "value %s is not a string or number", raw)
		}
	} else if raw[0] != '-' && (raw[0] < '0' || raw[0] > '9') {
		return decimal.Decimal{}, fail(ReasonInvalidField, "value %s is not a number", raw)
	}
	if len(text) > 64 {
		return decimal.Decimal{}, fail(ReasonInvalidField, "value %.20s... is too long", text)
	}
	v, err := decimal.NewFromString(text)
	if err != nil {
		return decimal.Decimal{}, fail(ReasonInvalidField, "value %q is not a decimal number", text)
	}
	if exp := v.Exponent(); exp < -maxValueFractionDigits {
		// Normalise trailing zeros (1.50000000000 is fine) before refusing.
		if !v.Equal(v.Truncate(maxValueFractionDigits)) {
			return decimal.Decimal{}, fail(ReasonInvalidField, "value %s has more than %d decimal places", text, maxValueFractionDigits)
		}
		v = v.Truncate(maxValueFractionDigits)
	}
	if !withinIntegerDigits(text) && v.Abs().Cmp(maxValue) >= 0 {
		return decimal.Decimal{}, fail(ReasonInvalidField, "value %s has more than %d integer digits", text, maxValueIntegerDigits)
	}
	return v, nil
}

var maxValue = decimal.New(1, maxValueIntegerDigits)

// withinIntegerDigits reports, from the text alone, that a plain decimal
// (no exponent) has at most maxValueIntegerDigits integer digits: the usual
// case, checked without big-number arithmetic.
func withinIntegerDigits(text string) bool {
	digits := 0
	for i := 0; i < len(text); i++ {
		switch c := text[i]; {
		case c == '.':
			return digits <= maxValueIntegerDigits
		case c >= '0' && c <= '9':
			if digits > 0 || c != '0' {
				digits++
			}
		case c == '-' && i == 0:
		default:
			return false // an exponent or anything else: let decimal decide
		}
	}
	return digits <= maxValueIntegerDigits
}

func sortedDims(dims []Dim) ([]Dim, error) {
	for _, d := range dims {
		if d.Key == "" || len(d.Key) > maxDimKeyBytes {
			return nil, fail(ReasonInvalidField, "dim key %.20q is empty or longer than %d bytes", d.Key, maxDimKeyBytes)
		}
		if len(d.Value) > maxIdentifierBytes || strings.IndexByte(d.Value, 0) >= 0 {
			return nil, checkIdentifier("dim "+d.Key, d.Value) // named only when refused
		}
	}
	if len(dims) > 1 {
		slices.SortFunc(dims, func(a, b Dim) int { return strings.Compare(a.Key, b.Key) })
	}
	return dims, nil
}
