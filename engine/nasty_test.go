package engine

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestNastyRecords: every hostile record is refused with a specific reason
// (and so reaches the dead-letter topic with it); none panics or is taken.
func TestNastyRecords(t *testing.T) {
	meters, err := CompileMeters([]Meter{
		{Name: "sms", GroupBy: []string{"*"}},
		{Name: "voice_seconds", GroupBy: []string{"*"}, NonNegative: true},
		{Name: "payment", Decimal: true},
	}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := NewDecoder(meters, WithMaxFutureSkew(time.Hour), WithHorizon(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)),
		WithClock(func() time.Time { return now }))
	rec := func(fields string) string {
		return `{"id":"e1","customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z"` + fields + `}`
	}
	for _, tt := range []struct {
		name, raw string
		reason    Reason
	}{
		{"invalid JSON", `{"id":"e1","customer":`, ReasonInvalidJSON},
		{"not an object", `[1,2,3]`, ReasonInvalidField},
		{"empty", ``, ReasonInvalidJSON},
		{"customer is a number", `{"id":"e1","customer":5,"meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"value is an object", rec(`,"value":{"a":1}`), ReasonInvalidField},
		{"value is a boolean", rec(`,"value":true`), ReasonInvalidField},
		{"value NaN", rec(`,"value":"NaN"`), ReasonInvalidField},
		{"value Infinity", rec(`,"value":"Infinity"`), ReasonInvalidField},
		{"bare NaN", rec(`,"value":NaN`), ReasonInvalidJSON},
		{"negative duration", `{"id":"e1","customer":"c1","meter":"voice_seconds","time":"2026-03-01T10:00:00Z","value":-60}`, ReasonInvalidField},
		{"fraction where integers", rec(`,"value":1.5`), ReasonInvalidField},
		{"huge number", rec(`,"value":1e400`), ReasonInvalidField},
		{"huge integer", rec(`,"value":123456789012345678901234567890`), ReasonInvalidField},
		{"huge exponent", `{"id":"e1","customer":"c1","meter":"payment","time":"2026-03-01T10:00:00Z","value":"1e999999999"}`, ReasonInvalidField},
		{"too many decimals", `{"id":"e1","customer":"c1","meter":"payment","time":"2026-03-01T10:00:00Z","value":0.0000000000000000000001}`, ReasonInvalidField},
		{"10 MB record", rec(`,"dims":{"x":"` + strings.Repeat("a", 10<<20) + `"}`), ReasonTooLarge},
		{"missing id", `{"customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"missing customer", `{"id":"e1","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"missing meter", `{"id":"e1","customer":"c1","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"missing time", `{"id":"e1","customer":"c1","meter":"sms"}`, ReasonMissingField},
		{"unknown meter", `{"id":"e1","customer":"c1","meter":"fax","time":"2026-03-01T10:00:00Z"}`, ReasonUnknownMeter},
		{"time not RFC 3339", `{"id":"e1","customer":"c1","meter":"sms","time":"01/03/2026 10:00"}`, ReasonInvalidField},
		{"time far in the future", `{"id":"e1","customer":"c1","meter":"sms","time":"2030-01-01T00:00:00Z"}`, ReasonTimeRange},
		{"time far in the past", `{"id":"e1","customer":"c1","meter":"sms","time":"1970-01-01T00:00:00Z"}`, ReasonTimeRange},
		{"invalid UTF-8", "{\"id\":\"e\xff1\",\"customer\":\"c1\",\"meter\":\"sms\",\"time\":\"2026-03-01T10:00:00Z\"}", ReasonInvalidField},
		{"NUL in customer", `{"id":"e1","customer":"c\u00001","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"huge customer id", `{"id":"e1","customer":"` + strings.Repeat("c", 5000) + `","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"duplicate keys", `{"id":"e1","customer":"c1","customer":"c2","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"dims not strings", rec(`,"dims":{"a":{"b":1}}`), ReasonInvalidField},
		{"subscription without plan", `{"type":"subscription.created","id":"s1","customer":"c1","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"unknown subscription type", `{"type":"subscription.paused","id":"s1","customer":"c1","plan":"p","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"cloudevent without source", `{"specversion":"1.0","id":"e1","type":"sms","subject":"c1","time":"2026-03-01T10:00:00Z","data":{}}`, ReasonMissingField},
		{"cloudevent wrong version", `{"specversion":"0.3","id":"e1","source":"s","type":"sms","subject":"c1","time":"2026-03-01T10:00:00Z","data":{}}`, ReasonInvalidField},
	} {
		t.Run(tt.name, func(t *testing.T) {
			evs, err := d.Decode([]byte(tt.raw), nil)
			var de *decodeError
			if !errors.As(err, &de) {
				t.Fatalf("accepted (%d events) or failed without a reason: %v", len(evs), err)
			}
			if de.reason != tt.reason || len(evs) != 0 {
				t.Errorf("reason %s (%s), %d events; want %s", de.reason, de.detail, len(evs), tt.reason)
			}
		})
	}
	// Not duplicates: the same key nested, or quoted inside a value.
	for _, ok := range []string{rec(`,"value":1,"dims":{"id":"cell-7","meter":"x"}`), rec(`,"value":1,"dims":{"note":"\"id\": 2, \"id\":"}`)} {
		if _, err := d.Decode([]byte(ok), nil); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}
