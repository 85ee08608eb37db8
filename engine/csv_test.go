package engine

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// cdrFormat is a mediation system's voice and SMS CDRs: a header naming
// the columns, local times in Europe/Paris.
var cdrFormat = CSVFormat{
	Fields:     []string{"call_id", "msisdn", "service", "start", "duration", "called_country"},
	Header:     true,
	Columns:    CSVColumns{ID: "call_id", Customer: "msisdn", Meter: "service", Time: "start", Value: "duration"},
	Dimensions: map[string]string{"destination": "called_country"},
	TimeFormat: "2006-01-02 15:04:05",
	Timezone:   "Europe/Paris",
}

func csvDecoder(t testing.TB, f CSVFormat) *Decoder {
	t.Helper()
	c, err := CompileCSV(f)
	if err != nil {
		t.Fatal(err)
	}
	return NewDecoder(testMeters(t), WithCSV(c))
}

// TestDecodeCSV: CSV lines become the same events as their JSON records;
// a header is skipped; bad lines are refused with a reason that names the
// column; JSON records still decode beside them.
func TestDecodeCSV(t *testing.T) {
	d := csvDecoder(t, cdrFormat)
	evs, err := d.Decode([]byte("call_id,msisdn,service,start,duration,called_country"), nil)
	if err != nil || len(evs) != 0 {
		t.Fatalf("header: %v, %d events; want it skipped", err, len(evs))
	}
	ev, err := decodeOne(d, []byte(`c-1, 4479000001 ,voice_seconds,2026-11-24 10:15:03,0183,"uk"`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := decodeOne(d, []byte(`{"id":"c-1","customer":"4479000001","meter":"voice_seconds","time":"2026-11-24T09:15:03Z","value":183,"dims":{"destination":"uk"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.ID != want.ID || ev.Customer != want.Customer || ev.Meter != want.Meter || ev.TimeNs != want.TimeNs || !ev.Value().Equal(want.Value()) ||
		ev.GroupKey != want.GroupKey {
		t.Fatalf("CSV line gave %+v, its JSON record %+v", ev, want)
	}
	if !ev.Value().Equal(decimal.NewFromInt(183)) || time.Unix(0, ev.TimeNs).UTC().Format(time.RFC3339) != "2026-11-24T09:15:03Z" {
		t.Fatalf("value %s at %s; want 183 at 09:15:03 UTC (10:15:03 in Paris)", ev.Value(), time.Unix(0, ev.TimeNs).UTC())
	}
	for _, tt := range []struct{ line, want string }{
		{`c-2,4479000001,voice_seconds,2026-11-24 10:15:03,183`, "has 5 columns; csv.fields has 6"},
		{`c-3,4479000001,voice_seconds,24/11/2026 10:15,183,uk`, `start "24/11/2026 10:15" does not match csv.timeFormat`},
		{`c-4,4479000001,voice_seconds,2026-11-24 10:15:03,three,uk`, `duration "three" is not a decimal number`},
		{`c-5,4479000001,teleport,2026-11-24 10:15:03,1,uk`, `no meter reads event type "teleport"`},
		{`,4479000001,sms,2026-11-24 10:15:03,1,uk`, "no id"},
		{`c-6,"4479,sms,2026-11-24 10:15:03,1,uk`, "CSV line"},
	} {
		_, err := d.Decode([]byte(tt.line), nil)
		var de *decodeError
		if !errors.As(err, &de) || !strings.Contains(de.detail, tt.want) {
			t.Errorf("%s: %v, want a dead letter saying %q", tt.line, err, tt.want)
		}
	}
}

// TestDecodeCSVPositions: columns by position, a constant meter, unix
// milliseconds, another delimiter.
func TestDecodeCSVPositions(t *testing.T) {
	d := csvDecoder(t, CSVFormat{Delimiter: ";", Meter: "sms", TimeFormat: "unix_ms",
		Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Value: "4"}})
	ev, err := decodeOne(d, []byte("s-1;c9;1764000000123;+2.50"))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Meter != "sms" || ev.Customer != "c9" || ev.TimeNs != 1764000000123*int64(time.Millisecond) || !ev.Value().Equal(decimal.RequireFromString("2.5")) {
		t.Fatalf("got %+v", ev)
	}
}

// TestCompileCSVErrors: a bad format fails at start naming the key.
func TestCompileCSVErrors(t *testing.T) {
	for _, tt := range []struct {
		f    CSVFormat
		want string
	}{
		{CSVFormat{Columns: CSVColumns{Customer: "1", Time: "2", Meter: "3"}}, "csv.columns.id: missing"},
		{CSVFormat{Columns: CSVColumns{ID: "call", Customer: "1", Time: "2", Meter: "3"}}, `csv.columns.id: "call" is not a position nor one of csv.fields`},
		{CSVFormat{Columns: CSVColumns{ID: "1", Customer: "2", Time: "3"}}, "csv.columns.meter: missing"},
		{CSVFormat{Header: true, Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Meter: "4"}}, "csv.header: set, but csv.fields"},
		{CSVFormat{Delimiter: "ab", Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Meter: "4"}}, "csv.delimiter"},
		{CSVFormat{TimeFormat: "dd/mm/yyyy", Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Meter: "4"}}, "csv.timeFormat"},
		{CSVFormat{Timezone: "Mars/Olympus", Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Meter: "4"}}, "csv.timezone"},
		{CSVFormat{Fields: []string{"a", "b"}, Columns: CSVColumns{ID: "1", Customer: "2", Time: "3", Meter: "a"}}, "past the 2 columns"},
	} {
		if _, err := CompileCSV(tt.f); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want %q", tt.f, err, tt.want)
		}
	}
}

// FuzzDecodeCSV: no CSV line panics, a refused one yields no event, and
// an accepted one has its identity and time.
func FuzzDecodeCSV(f *testing.F) {
	f.Add([]byte(`c-1,4479000001,voice_seconds,2026-11-24 10:15:03,183,uk`))
	f.Add([]byte(`call_id,msisdn,service,start,duration,called_country`))
	f.Add([]byte(`"c,1","447""9",sms,2026-11-24 10:15:03,,"u k"`))
	f.Add([]byte("c-1,4479000001,sms,2026-03-29 02:30:00,1e3,fr\r\n"))
	d := csvDecoder(f, cdrFormat)
	f.Fuzz(func(t *testing.T, raw []byte) {
		evs, err := d.Decode(raw, nil)
		if err != nil && len(evs) != 0 {
			t.Fatalf("refused a line but returned %d events", len(evs))
		}
		for _, ev := range evs {
			if ev.ID == "" || ev.Customer == "" || ev.meter == nil {
				t.Fatalf("accepted an event without identity: %+v", ev)
			}
		}
	})
}

// TestDecodeCSVEdges, from an independent review: a file's byte order mark
// is dropped (the header is still a header, the first cell clean); a
// record of two lines, or a line break in a field, is refused; a local
// time in a daylight-saving gap is refused; a NUL delimiter fails at start.
func TestDecodeCSVEdges(t *testing.T) {
	d := csvDecoder(t, cdrFormat)
	if evs, err := d.Decode([]byte("\ufeffcall_id,msisdn,service,start,duration,called_country"), nil); err != nil || len(evs) != 0 {
		t.Errorf("a header after a BOM: %v, %d events", err, len(evs))
	}
	ev, err := decodeOne(d, []byte("\ufeffc-1,ann,voice_seconds,2026-11-24 10:15:03,1,uk\r\n"))
	if err != nil || ev.ID != "c-1" {
		t.Errorf("a line after a BOM: %v, id %q", err, ev.ID)
	}
	for _, line := range []string{
		"c-1,ann,voice_seconds,2026-11-24 10:15:03,1,uk\nc-2,ann,voice_seconds,\"2026-11-24 10:15:04,1,uk",
		"c-1,ann,voice_seconds,2026-11-24 10:15:03,1,uk\nc-2,ann,voice_seconds,2026-11-24 10:15:04,1,uk",
		"c-1,ann,voice_seconds,2026-11-24 10:15:03,1,\"u\nk\"",
		"c-1,ann,voice_seconds,2026-03-29 02:30:00,1,uk", // Paris skips 02:00-03:00
	} {
		if _, err := d.Decode([]byte(line), nil); err == nil {
			t.Errorf("%q: accepted", line)
		}
	}
	if ev, err := decodeOne(d, []byte("c-1,ann,voice_seconds,2026-10-25 02:30:00,1,uk")); err != nil ||
		time.Unix(0, ev.TimeNs).UTC().Format(time.RFC3339) != "2026-10-25T00:30:00Z" {
		t.Errorf("a repeated local time is read as the first (CEST, 00:30 UTC): %v %s", err, time.Unix(0, ev.TimeNs).UTC())
	}
	f := cdrFormat
	f.Delimiter = "\x00"
	if _, err := CompileCSV(f); err == nil {
		t.Error("a NUL delimiter compiled")
	}
}
