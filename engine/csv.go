package engine

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// CSV call detail records. Mediation systems write CDRs as CSV lines; a
// Decoder with WithCSV reads a record that is not a JSON object as one
// CSV line, mapped to a usage record by the columns of a CSVFormat, and
// then decodes that record as any other (same checks, same dead letters):
//
//	call_id,msisdn,service,start,duration,called_country
//	c-1,4479000001,voice,2026-11-24 10:15:03,183,uk
//
// with fields [call_id, msisdn, service, start, duration, called_country]
// and columns {id: call_id, customer: msisdn, meter: service, time: start,
// value: duration}, dimensions {destination: called_country}, timeFormat
// "2006-01-02 15:04:05" is {"id":"c-1","customer":"4479000001",
// "meter":"voice","time":"2026-11-24T10:15:03Z","value":183,
// "dims":{"destination":"uk"}}. One line is one record (a quoted field
// may not hold a newline).

// CSVFormat maps CSV lines to usage records (config key csv).
type CSVFormat struct {
	// Delimiter separates fields: one character, default ",".
	Delimiter string `yaml:"delimiter"`
	// Fields name the columns in order; columns may then be named. A line
	// equal to them is a header, skipped when Header is set.
	Fields []string `yaml:"fields"`
	Header bool     `yaml:"header"`
	// Columns say where each field of the record is: a name of Fields or
	// a position (1 is the first column).
	Columns CSVColumns `yaml:"columns"`
	// Meter is the event type of every line when no column gives it.
	Meter string `yaml:"meter"`
	// TimeFormat is the time column's format: rfc3339 (the default), unix
	// (seconds), unix_ms, or a Go layout such as "2006-01-02 15:04:05".
	TimeFormat string `yaml:"timeFormat"`
	// Timezone is the IANA zone of times written without an offset
	// (default UTC).
	Timezone string `yaml:"timezone"`
	// Dimensions are dimension: column.
	Dimensions map[string]string `yaml:"dimensions"`
}

// CSVColumns locate a usage record's fields (names of CSVFormat.Fields or
// 1-based positions). Value may be empty for COUNT meters.
type CSVColumns struct {
	ID       string `yaml:"id"`
	Customer string `yaml:"customer"`
	Meter    string `yaml:"meter"`
	Time     string `yaml:"time"`
	Value    string `yaml:"value"`
}

// CSVDecoder is a compiled CSVFormat: column indexes (-1: none).
type CSVDecoder struct {
	delimiter                        rune
	fields                           []string
	header                           bool
	id, customer, meter, time, value int
	constMeter                       string
	layout                           string // a Go layout; "" for unix or unix_ms
	unixScale                        int64  // ns per unit of a unix time
	loc                              *time.Location
	dims                             []csvDim // sorted by name
	cells                            int      // cells a line must have at least
}

type csvDim struct {
	name   string
	column int
}

// CompileCSV checks f and returns its decoder; errors name the key under
// csv and the fix.
func CompileCSV(f CSVFormat) (*CSVDecoder, error) {
	c := &CSVDecoder{delimiter: ',', fields: f.Fields, header: f.Header, constMeter: f.Meter, meter: -1, value: -1}
	if f.Delimiter != "" {
		r, size := utf8.DecodeRuneInString(f.Delimiter)
		if size != len(f.Delimiter) || r == '"' || r == '\n' || r == '\r' || r == 0 || r == '\ufeff' || r == utf8.RuneError {
			return nil, configError("csv.delimiter", "%q: give one character other than a quote or a line break", f.Delimiter)
		}
		c.delimiter = r
	}
	seen := map[string]bool{}
	for _, name := range f.Fields {
		if name == "" || seen[name] {
			return nil, configError("csv.fields", "%q is empty or repeated; name each column once", name)
		}
		seen[name] = true
	}
	if f.Header && len(f.Fields) == 0 {
		return nil, configError("csv.header", "set, but csv.fields does not say what the header holds; list the columns")
	}
	column := func(key, v string, required bool) (int, error) {
		if v == "" {
			if required {
				return -1, configError("csv.columns."+key, "missing; give the column's name (of csv.fields) or its position (1 is the first)")
			}
			return -1, nil
		}
		if n, err := strconv.Atoi(v); err == nil {
			if n < 1 {
				return -1, configError("csv.columns."+key, "position %d: columns count from 1", n)
			}
			return n - 1, nil
		}
		if i := slices.Index(f.Fields, v); i >= 0 {
			return i, nil
		}
		return -1, configError("csv.columns."+key, "%q is not a position nor one of csv.fields %v", v, f.Fields)
	}
	var err error
	if c.id, err = column("id", f.Columns.ID, true); err != nil {
		return nil, err
	}
	if c.customer, err = column("customer", f.Columns.Customer, true); err != nil {
		return nil, err
	}
	if c.time, err = column("time", f.Columns.Time, true); err != nil {
		return nil, err
	}
	if c.value, err = column("value", f.Columns.Value, false); err != nil {
		return nil, err
	}
	if c.meter, err = column("meter", f.Columns.Meter, f.Meter == ""); err != nil {
		return nil, configError("csv.columns.meter", "missing; give the column of the event type, or csv.meter for a single one")
	}
	if c.meter >= 0 && f.Meter != "" {
		return nil, configError("csv.meter", "set beside csv.columns.meter; keep one")
	}
	for _, name := range slices.Sorted(maps.Keys(f.Dimensions)) {
		i, err := column("dimensions", f.Dimensions[name], true)
		if err != nil {
			return nil, configError("csv.dimensions."+name, "%v", err.(*ConfigError).Problem)
		}
		c.dims = append(c.dims, csvDim{name, i})
	}
	if len(c.dims) > maxDims {
		return nil, configError("csv.dimensions", "%d dimensions, at most %d", len(c.dims), maxDims)
	}
	switch f.TimeFormat {
	case "", "rfc3339":
		c.layout = time.RFC3339Nano
	case "unix":
		c.unixScale = int64(time.Second)
	case "unix_ms":
		c.unixScale = int64(time.Millisecond)
	default:
		if !strings.Contains(f.TimeFormat, "2006") || !strings.Contains(f.TimeFormat, "01") && !strings.Contains(f.TimeFormat, "Jan") {
			return nil, configError("csv.timeFormat", "%q: use rfc3339, unix, unix_ms or a Go layout of the reference time, such as \"2006-01-02 15:04:05\"", f.TimeFormat)
		}
		c.layout = f.TimeFormat
	}
	c.loc = time.UTC
	if f.Timezone != "" {
		if c.loc, err = time.LoadLocation(f.Timezone); err != nil {
			return nil, configError("csv.timezone", "%v", err)
		}
	}
	c.cells = max(c.id, c.customer, c.meter, c.time, c.value) + 1
	for _, d := range c.dims {
		c.cells = max(c.cells, d.column+1)
	}
	if len(f.Fields) > 0 {
		if c.cells > len(f.Fields) {
			return nil, configError("csv.columns", "a position past the %d columns of csv.fields", len(f.Fields))
		}
		c.cells = len(f.Fields)
	}
	return c, nil
}

// WithCSV reads records that are not JSON objects as CSV lines of c.
func WithCSV(c *CSVDecoder) DecoderOption {
	return func(d *Decoder) { d.csv = c }
}

// isCSV reports whether raw is to be read as CSV: it does not start, after
// blanks, with a JSON object.
func isCSV(raw []byte) bool {
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) == 0 || t[0] != '{'
}

// toJSON turns a CSV line into the equivalent plain usage record; skip is
// set for a header line.
func (c *CSVDecoder) toJSON(raw []byte) (out []byte, skip bool, err error) {
	// A file's byte order mark, and the line end a producer may keep.
	line := bytes.TrimRight(bytes.TrimPrefix(raw, []byte("\ufeff")), "\r\n")
	if bytes.ContainsAny(line, "\r\n") {
		return nil, false, fail(ReasonInvalidField, "CSV record holds more than one line (or a line break in a field); send one CDR a record")
	}
	r := csv.NewReader(bytes.NewReader(line))
	r.Comma, r.FieldsPerRecord, r.ReuseRecord = c.delimiter, -1, true
	cells, rerr := r.Read()
	if rerr != nil {
		return nil, false, fail(ReasonInvalidField, "CSV line: %v", rerr)
	}
	if c.header && slices.Equal(cells, c.fields) {
		return nil, true, nil
	}
	if len(cells) < c.cells || len(c.fields) > 0 && len(cells) != len(c.fields) {
		return nil, false, fail(ReasonInvalidField, "CSV line has %d columns; csv.fields has %d (or a mapped column is past its end)", len(cells), max(c.cells, len(c.fields)))
	}
	name := func(i int) string {
		if i < len(c.fields) {
			return c.fields[i]
		}
		return "column " + strconv.Itoa(i+1)
	}
	rec := struct {
		ID       string            `json:"id"`
		Customer string            `json:"customer"`
		Meter    string            `json:"meter"`
		Time     string            `json:"time"`
		Value    json.RawMessage   `json:"value,omitempty"`
		Dims     map[string]string `json:"dims,omitempty"`
	}{ID: strings.TrimSpace(cells[c.id]), Customer: strings.TrimSpace(cells[c.customer]), Meter: c.constMeter}
	if c.meter >= 0 {
		rec.Meter = strings.TrimSpace(cells[c.meter])
	}
	cell := strings.TrimSpace(cells[c.time])
	var at time.Time
	if c.unixScale > 0 {
		n, perr := strconv.ParseInt(cell, 10, 64)
		if perr != nil || n < 0 || n > (1<<62)/c.unixScale {
			return nil, false, fail(ReasonInvalidField, "%s %q is not a %s time", name(c.time), cell, map[int64]string{int64(time.Second): "unix", int64(time.Millisecond): "unix_ms"}[c.unixScale])
		}
		at = time.Unix(0, n*c.unixScale)
	} else if at, err = time.ParseInLocation(c.layout, cell, c.loc); err != nil {
		return nil, false, fail(ReasonInvalidField, "%s %q does not match csv.timeFormat %q", name(c.time), cell, c.layout)
	} else if wall, _ := time.Parse(c.layout, cell); wall.Location() == time.UTC {
		// A local time the zone skips (a daylight-saving gap) names no
		// instant; one it repeats (the hour after a gap's end) is read as
		// the first of the two, whatever Go's choice (write an offset to
		// name the second).
		if !sameWallClock(at.In(c.loc), wall) {
			return nil, false, fail(ReasonInvalidField, "%s %q does not exist in %s (a daylight-saving gap)", name(c.time), cell, c.loc)
		}
		_, now := at.In(c.loc).Zone()
		if _, before := at.Add(-3 * time.Hour).In(c.loc).Zone(); before != now { // a change of offset in the last hours
			for back := 3 * time.Hour; back > 0; back -= 15 * time.Minute {
				if earlier := at.Add(-back); sameWallClock(earlier.In(c.loc), wall) {
					at = earlier
					break
				}
			}
		}
	}
	rec.Time = at.UTC().Format(time.RFC3339Nano)
	if c.value >= 0 {
		if v := strings.TrimSpace(cells[c.value]); v != "" {
			n, perr := decimal.NewFromString(v)
			if perr != nil {
				return nil, false, fail(ReasonInvalidField, "%s %q is not a decimal number", name(c.value), v)
			}
			rec.Value = json.RawMessage(n.String()) // 007, +5 and 5. as JSON has them
		}
	}
	if len(c.dims) > 0 {
		rec.Dims = make(map[string]string, len(c.dims))
		for _, d := range c.dims {
			rec.Dims[d.name] = strings.TrimSpace(cells[d.column])
		}
	}
	out, err = json.Marshal(rec)
	if err != nil {
		return nil, false, fmt.Errorf("engine: CSV record: %w", err)
	}
	return out, false, nil
}

// sameWallClock reports whether a and b read the same on a clock.
func sameWallClock(a, b time.Time) bool {
	ay, am, ad := a.Date()
	by, bm, bd := b.Date()
	return ay == by && am == bm && ad == bd && a.Hour() == b.Hour() && a.Minute() == b.Minute() && a.Second() == b.Second() &&
		a.Nanosecond() == b.Nanosecond()
}
