package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
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
	ID       string          `json:"id"`
	Customer string          `json:"customer"`
	Meter    string          `json:"meter"`
	Time     string          `json:"time"`
	Value    json.RawMessage `json:"value"`
	Dims     map[string]any  `json:"dims"`
	// CloudEvents: type is the meter, subject the customer, data the payload.
	SpecVersion string                     `json:"specversion"`
	Source      string                     `json:"source"`
	Type        string                     `json:"type"`
	Subject     string                     `json:"subject"`
	Data        map[string]json.RawMessage `json:"data"`
}

// Decoder turns raw JSON records into Events. It is safe for concurrent use.
type Decoder struct {
	// knownMeter reports whether a meter is configured; others are dead-lettered.
	knownMeter func(string) bool
}

// NewDecoder returns a decoder that accepts the meters knownMeter accepts.
func NewDecoder(knownMeter func(string) bool) *Decoder {
	return &Decoder{knownMeter: knownMeter}
}

// Decode parses one record. On failure the error is a *decodeError carrying
// the dead-letter reason.
func (d *Decoder) Decode(raw []byte) (Event, error) {
	if len(raw) > maxRecordBytes {
		return Event{}, fail(ReasonTooLarge, "record is %d bytes, limit %d", len(raw), maxRecordBytes)
	}
	if !utf8.Valid(raw) {
		return Event{}, fail(ReasonInvalidField, "record is not valid UTF-8")
	}
	var w wireEvent
	if err := json.Unmarshal(raw, &w); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return Event{}, fail(ReasonInvalidField, "field %s: %s where %s is expected", typeErr.Field, typeErr.Value, typeErr.Type)
		}
		return Event{}, fail(ReasonInvalidJSON, "%v", err)
	}
	var ev Event
	var rawValue json.RawMessage
	var dims []Dim
	var err error
	if w.SpecVersion != "" {
		if w.SpecVersion != "1.0" {
			return Event{}, fail(ReasonInvalidField, "specversion %q is not 1.0", w.SpecVersion)
		}
		ev.ID, ev.Source, ev.Meter, ev.Customer = w.ID, w.Source, w.Type, w.Subject
		if w.Source == "" {
			return Event{}, fail(ReasonMissingField, "cloudevent has no source")
		}
		if w.Data == nil {
			return Event{}, fail(ReasonMissingField, "cloudevent has no data")
		}
		rawValue = w.Data["value"]
		dims, err = dataDims(w.Data)
	} else {
		ev.ID, ev.Meter, ev.Customer = w.ID, w.Meter, w.Customer
		rawValue = w.Value
		dims, err = plainDims(w.Dims)
	}
	if err != nil {
		return Event{}, err
	}
	for _, f := range [...]struct{ name, value string }{
		{"id", ev.ID}, {"customer", ev.Customer}, {"meter", ev.Meter},
	} {
		if f.value == "" {
			return Event{}, fail(ReasonMissingField, "no %s", f.name)
		}
		if err := checkIdentifier(f.name, f.value); err != nil {
			return Event{}, err
		}
	}
	if err := checkIdentifier("source", ev.Source); err != nil {
		return Event{}, err
	}
	if ev.TimeNs, err = parseTime(w.Time); err != nil {
		return Event{}, err
	}
	if ev.Value, err = parseValue(rawValue); err != nil {
		return Event{}, err
	}
	if !d.knownMeter(ev.Meter) {
		return Event{}, fail(ReasonUnknownMeter, "meter %q is not configured", ev.Meter)
	}
	ev.Dims = dims
	ev.GroupKey = canonicalGroupKey(dims)
	return ev, nil
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
	if v.Abs().Cmp(maxValue) >= 0 {
		return decimal.Decimal{}, fail(ReasonInvalidField, "value %s has more than %d integer digits", text, maxValueIntegerDigits)
	}
	return v, nil
}

var maxValue = decimal.New(1, maxValueIntegerDigits)

func plainDims(m map[string]any) ([]Dim, error) {
	if len(m) == 0 {
		return nil, nil
	}
	if len(m) > maxDims {
		return nil, fail(ReasonInvalidField, "%d dims, limit %d", len(m), maxDims)
	}
	dims := make([]Dim, 0, len(m))
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil, fail(ReasonInvalidField, "dim %q is not a string", k)
		}
		dims = append(dims, Dim{Key: k, Value: s})
	}
	return sortedDims(dims)
}

// dataDims takes every string-valued field of a CloudEvent's data other than
// value as a dimension; fields of other types are ignored.
func dataDims(data map[string]json.RawMessage) ([]Dim, error) {
	var dims []Dim
	for k, raw := range data {
		if k == "value" || len(raw) == 0 || raw[0] != '"' {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fail(ReasonInvalidField, "data.%s: %v", k, err)
		}
		dims = append(dims, Dim{Key: k, Value: s})
	}
	if len(dims) > maxDims {
		return nil, fail(ReasonInvalidField, "%d dims, limit %d", len(dims), maxDims)
	}
	return sortedDims(dims)
}

func sortedDims(dims []Dim) ([]Dim, error) {
	for _, d := range dims {
		if d.Key == "" || len(d.Key) > maxDimKeyBytes {
			return nil, fail(ReasonInvalidField, "dim key %.20q is empty or longer than %d bytes", d.Key, maxDimKeyBytes)
		}
		if err := checkIdentifier("dim "+d.Key, d.Value); err != nil {
			return nil, err
		}
	}
	sort.Slice(dims, func(i, j int) bool { return dims[i].Key < dims[j].Key })
	return dims, nil
}
