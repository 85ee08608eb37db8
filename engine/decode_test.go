package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// testMeters are SUM meters sms and voice_seconds over every dimension.
func testMeters(t testing.TB) *Meters {
	m, err := CompileMeters([]Meter{
		{Name: "sms", GroupBy: []string{"*"}, Decimal: true},
		{Name: "voice_seconds", GroupBy: []string{"*"}, Decimal: true},
	}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func decodeOne(d *Decoder, raw []byte) (Event, error) {
	evs, err := d.Decode(raw, nil)
	if err != nil {
		return Event{}, err
	}
	if len(evs) != 1 {
		return Event{}, fmt.Errorf("decoded %d events, want 1", len(evs))
	}
	return evs[0], nil
}

func TestDecodePlainAndCloudEvents(t *testing.T) {
	d := NewDecoder(testMeters(t))
	tests := []struct {
		name     string
		in       string
		customer string
		meter    string
		source   string
		value    string
		group    string
		time     string
	}{
		{"plain", `{"id":"e1","customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z","value":1,"dims":{"destination":"uk"}}`,
			"c1", "sms", "", "1", "destination=uk", "2026-03-01T10:00:00Z"},
		{"plain string value and offset time", `{"id":"e2","customer":"c1","meter":"voice_seconds","time":"2026-03-01T12:00:00.5+02:00","value":"60.25"}`,
			"c1", "voice_seconds", "", "60.25", "", "2026-03-01T10:00:00.5Z"},
		{"cloudevent", `{"specversion":"1.0","id":"e3","source":"switch-7","type":"voice_seconds","subject":"c9","time":"2026-03-01T10:00:00Z","data":{"value":"42","destination":"fr","rat":"5G","ignored":3}}`,
			"c9", "voice_seconds", "switch-7", "42", "destination=fr,rat=5G", "2026-03-01T10:00:00Z"},
		{"escaped dims", `{"id":"e4","customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z","value":1,"dims":{"a=b":"x,y"}}`,
			"c1", "sms", "", "1", `a\=b=x\,y`, "2026-03-01T10:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := decodeOne(d, []byte(tt.in))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			want, _ := time.Parse(time.RFC3339Nano, tt.time)
			if ev.Customer != tt.customer || ev.Meter != tt.meter || ev.Source != tt.source ||
				ev.Value().String() != tt.value || ev.GroupKey != tt.group || ev.TimeNs != want.UnixNano() {
				t.Errorf("got customer=%q meter=%q source=%q value=%s group=%q time=%d; want %q %q %q %s %q %d",
					ev.Customer, ev.Meter, ev.Source, ev.Value(), ev.GroupKey, ev.TimeNs,
					tt.customer, tt.meter, tt.source, tt.value, tt.group, want.UnixNano())
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	d := NewDecoder(testMeters(t))
	ok := `"id":"e","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z"`
	tests := []struct {
		name   string
		in     string
		reason Reason
	}{
		{"not json", `{"id":`, ReasonInvalidJSON},
		{"not an object", `[1,2]`, ReasonInvalidField},
		{"wrong type", `{"id":5,"customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":1}`, ReasonInvalidField},
		{"missing id", `{"customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":1}`, ReasonMissingField},
		{"missing customer", `{"id":"e","meter":"sms","time":"2026-03-01T10:00:00Z","value":1}`, ReasonMissingField},
		{"missing time", `{"id":"e","customer":"c","meter":"sms","value":1}`, ReasonMissingField},
		{"missing value", `{` + ok + `}`, ReasonMissingField},
		{"null value", `{` + ok + `,"value":null}`, ReasonMissingField},
		{"bad time", `{"id":"e","customer":"c","meter":"sms","time":"yesterday","value":1}`, ReasonInvalidField},
		{"ancient time", `{"id":"e","customer":"c","meter":"sms","time":"1960-01-01T00:00:00Z","value":1}`, ReasonTimeRange},
		{"NaN", `{` + ok + `,"value":"NaN"}`, ReasonInvalidField},
		{"Inf", `{` + ok + `,"value":"Infinity"}`, ReasonInvalidField},
		{"bool value", `{` + ok + `,"value":true}`, ReasonInvalidField},
		{"huge value", `{` + ok + `,"value":1e30}`, ReasonInvalidField},
		{"too precise", `{` + ok + `,"value":"0.000000000001"}`, ReasonInvalidField},
		{"unknown meter", `{"id":"e","customer":"c","meter":"teleport","time":"2026-03-01T10:00:00Z","value":1}`, ReasonUnknownMeter},
		{"NUL in customer", `{"id":"e","customer":"c\u0000d","meter":"sms","time":"2026-03-01T10:00:00Z","value":1}`, ReasonInvalidField},
		{"non-string dim", `{` + ok + `,"value":1,"dims":{"n":1}}`, ReasonInvalidField},
		{"invalid utf8", "{\"id\":\"e\xff\",\"customer\":\"c\",\"meter\":\"sms\",\"time\":\"2026-03-01T10:00:00Z\",\"value\":1}", ReasonInvalidField},
		{"too large", `{` + ok + `,"value":1,"pad":"` + strings.Repeat("x", maxRecordBytes) + `"}`, ReasonTooLarge},
		{"cloudevent without source", `{"specversion":"1.0","id":"e","type":"sms","subject":"c","time":"2026-03-01T10:00:00Z","data":{"value":1}}`, ReasonMissingField},
		{"grant without meter", `{"type":"grant.created","id":"g","customer":"c","time":"2026-03-01T10:00:00Z","value":5}`, ReasonMissingField},
		{"grant of an unknown meter", `{"type":"grant.created","id":"g","customer":"c","meter":"teleport","time":"2026-03-01T10:00:00Z","value":5}`, ReasonUnknownMeter},
		{"grant without value", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"grant of nothing", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":0}`, ReasonInvalidField},
		{"negative grant", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":"-5"}`, ReasonInvalidField},
		{"grant expiring before it starts", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":5,"expires":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"grant with a bad expiry", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":5,"expires":"soon"}`, ReasonInvalidField},
		{"grant of units and money", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":5,"amount":"5.00","currency":"EUR"}`, ReasonInvalidField},
		{"money grant without a currency", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","amount":"5.00"}`, ReasonInvalidField},
		{"money grant in euros", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","amount":"5.00","currency":"euro"}`, ReasonInvalidField},
		{"currency without an amount", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":5,"currency":"EUR"}`, ReasonInvalidField},
		{"negative money grant", `{"type":"grant.created","id":"g","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","amount":"-5","currency":"EUR"}`, ReasonInvalidField},
		{"cloudevent grant with a numeric meter", `{"specversion":"1.0","id":"g","source":"s","type":"grant.created","subject":"c","time":"2026-03-01T10:00:00Z","data":{"meter":5,"value":5}}`, ReasonInvalidField},
		{"probe without ok", `{"type":"sla.probe","id":"p","customer":"c","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"probe with a text ok", `{"type":"sla.probe","id":"p","customer":"c","time":"2026-03-01T10:00:00Z","ok":"yes"}`, ReasonInvalidField},
		{"probe with a negative latency", `{"type":"sla.probe","id":"p","customer":"c","time":"2026-03-01T10:00:00Z","ok":true,"latency_ms":-1}`, ReasonInvalidField},
		{"probe slower than an hour", `{"type":"sla.probe","id":"p","customer":"c","time":"2026-03-01T10:00:00Z","ok":true,"latency_ms":3600001}`, ReasonInvalidField},
		{"probe with a text latency", `{"type":"sla.probe","id":"p","customer":"c","time":"2026-03-01T10:00:00Z","ok":true,"latency_ms":"fast"}`, ReasonInvalidField},
		{"outage without id", `{"type":"sla.outage","id":"o","customer":"c","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"outage ending before it starts", `{"type":"sla.outage","id":"o","customer":"c","outage":"x","time":"2026-03-01T10:00:00Z","end":"2026-03-01T09:00:00Z"}`, ReasonInvalidField},
		{"outage with a bad end", `{"type":"sla.outage","id":"o","customer":"c","outage":"x","time":"2026-03-01T10:00:00Z","end":"later"}`, ReasonInvalidField},
		{"issue without id", `{"type":"sla.issue","id":"i","customer":"c","status":"opened","time":"2026-03-01T10:00:00Z"}`, ReasonMissingField},
		{"issue with an unknown status", `{"type":"sla.issue","id":"i","customer":"c","issue":"T","status":"closed","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"unknown sla event", `{"type":"sla.incident","id":"i","customer":"c","time":"2026-03-01T10:00:00Z"}`, ReasonInvalidField},
		{"cloudevent outage with a numeric end", `{"specversion":"1.0","id":"o","source":"s","type":"sla.outage","subject":"c","time":"2026-03-01T10:00:00Z","data":{"outage":"x","end":5}}`, ReasonInvalidField},
		{"cloudevent wrong version", `{"specversion":"0.3","id":"e","source":"s","type":"sms","subject":"c","time":"2026-03-01T10:00:00Z","data":{"value":1}}`, ReasonInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := d.Decode([]byte(tt.in), nil)
			var de *decodeError
			if !errors.As(err, &de) {
				t.Fatalf("Decode(%.60s) = %v, want a decode error with reason %s", tt.in, err, tt.reason)
			}
			if de.reason != tt.reason {
				t.Errorf("reason %s (%s), want %s", de.reason, de.detail, tt.reason)
			}
		})
	}
}

func TestDecodeKeepsTrailingZeroPrecision(t *testing.T) {
	ev, err := decodeOne(NewDecoder(testMeters(t)), []byte(`{"id":"e","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":"1.500000000000"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Value().String() != "1.5" {
		t.Errorf("value %s, want 1.5", ev.Value())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"id":"e1","customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z","value":1,"dims":{"destination":"uk"}}`))
	f.Add([]byte(`{"specversion":"1.0","id":"e3","source":"s","type":"sms","subject":"c9","time":"2026-03-01T10:00:00Z","data":{"value":"42"}}`))
	f.Add([]byte(`{"type":"subscription.created","id":"s1","customer":"c1","plan":"pro","time":"2026-03-01T00:00:00Z"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"s2","source":"crm","type":"subscription.cancelled","subject":"c1","time":"2026-03-01T00:00:00Z","data":{}}`))
	f.Add([]byte(`{"type":"sla.probe","id":"p1","customer":"c1","time":"2026-03-01T00:00:00Z","ok":false,"latency_ms":812.5}`))
	f.Add([]byte(`{"type":"sla.outage","id":"o1","customer":"c1","outage":"inc-1","time":"2026-03-01T00:00:00Z","end":"2026-03-01T01:00:00Z"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"i1","source":"desk","type":"sla.issue","subject":"c1","time":"2026-03-01T00:00:00Z","data":{"issue":"T-1","status":"opened"}}`))
	f.Add([]byte(`{"type":"grant.created","id":"g1","customer":"c1","meter":"sms","time":"2026-03-01T00:00:00Z","value":100,"expires":"2026-04-01T00:00:00Z"}`))
	f.Add([]byte(`{"specversion":"1.0","id":"g2","source":"shop","type":"grant.created","subject":"c1","time":"2026-03-01T00:00:00Z","data":{"meter":"sms","value":"2.5"}}`))
	f.Add([]byte(`{"id":"e4","customer":"c1","meter":"voice_seconds","time":"2026-03-01T10:00:00+01:00","value":"1e3","dims":{"called":"4420"}}`))
	d := NewDecoder(testMeters(f))
	f.Fuzz(func(t *testing.T, raw []byte) {
		evs, err := d.Decode(raw, nil)
		if err != nil && len(evs) != 0 {
			t.Fatalf("refused a record but returned %d events", len(evs))
		}
		for _, ev := range evs {
			shared := ev.SLA != nil && ev.SLA.Service != "" // a shared service's event names no customer
			if ev.ID == "" || ev.Customer == "" && !shared || (ev.meter == nil && !ev.Subscription && ev.SLA == nil && (ev.Grant == nil || ev.Grant.Meter == "")) {
				t.Fatalf("accepted an event without identity: %+v", ev)
			}
		}
	})
}

func TestDecodeTimeBounds(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	d := NewDecoder(testMeters(t), WithMaxFutureSkew(time.Hour), WithHorizon(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		WithClock(func() time.Time { return now }))
	for _, tt := range []struct {
		at     string
		reason Reason // "" when accepted
	}{
		{"2026-03-01T12:59:59Z", ""},
		{"2026-03-01T13:00:01Z", ReasonTimeRange}, // more than an hour ahead of the clock
		{"2026-01-01T00:00:00Z", ""},
		{"2025-12-31T23:59:59Z", ReasonTimeRange}, // before the horizon
	} {
		_, err := d.Decode([]byte(`{"id":"e","customer":"c","meter":"sms","value":1,"time":"`+tt.at+`"}`), nil)
		var de *decodeError
		switch {
		case tt.reason == "" && err != nil:
			t.Errorf("%s refused: %v", tt.at, err)
		case tt.reason != "" && (!errors.As(err, &de) || de.reason != tt.reason):
			t.Errorf("%s: error %v, want reason %s", tt.at, err, tt.reason)
		}
	}
}

// TestDecodeSkewFromRecordStamp: maxFutureSkew is measured from the
// record's Kafka timestamp when it is earlier than the wall clock, so an
// audit reading the record hours later decides as the live run did; a
// stamp ahead of the clock (a producer's clock running fast) does not
// widen it.
func TestDecodeSkewFromRecordStamp(t *testing.T) {
	now := time.Date(2026, 3, 1, 15, 0, 0, 0, time.UTC)
	d := NewDecoder(testMeters(t), WithMaxFutureSkew(time.Hour), WithClock(func() time.Time { return now }))
	rec := []byte(`{"id":"e","customer":"c","meter":"sms","value":1,"time":"2026-03-01T14:00:00Z"}`)
	for _, tt := range []struct {
		name    string
		stamped time.Time
		refused bool
	}{
		{"no stamp: the wall clock", time.Time{}, false},
		{"stamped 3 hours before: refused as it was live", time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), true},
		{"stamped 30 minutes before", time.Date(2026, 3, 1, 13, 30, 0, 0, time.UTC), false},
		{"stamped ahead of the clock: the clock", time.Date(2026, 3, 1, 20, 0, 0, 0, time.UTC), false},
	} {
		_, err := d.DecodeAt(rec, nil, tt.stamped)
		var de *decodeError
		if refused := errors.As(err, &de) && de.reason == ReasonTimeRange; refused != tt.refused {
			t.Errorf("%s: refused = %v (%v), want %v", tt.name, refused, err, tt.refused)
		}
	}
}

func TestCompileMetersRejectsBadIncrements(t *testing.T) {
	sixty := decimal.NewFromInt(60)
	for _, tt := range []struct {
		meter Meter
		want  string
	}{
		{Meter{Name: "calls", Aggregation: AggCount, Increments: Increments{First: sixty, Next: sixty}}, "only SUM meters"},
		{Meter{Name: "secs", Increments: Increments{First: sixty}}, "increments.next: missing"},
		{Meter{Name: "secs", Increments: Increments{First: sixty.Neg(), Next: sixty}}, "must not be negative"},
	} {
		if _, err := CompileMeters([]Meter{tt.meter}, time.Minute); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CompileMeters(%+v) = %v, want an error with %q", tt.meter, err, tt.want)
		}
	}
}

// TestParseTimeFastAgrees checks the allocation-free time parser against
// time.Parse (parseTime) on valid times and on random mutations of them:
// whenever the fast path accepts, parseTime must accept with the same
// instant; whenever parseTime refuses, the fast path must too.
func TestParseTimeFastAgrees(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	alphabet := []byte("0123456789-:.TZz+ 9")
	accepted := 0
	for i := range 200_000 {
		ns := rng.Int64N(int64(230 * 365 * 24 * time.Hour))
		s := time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
		if i%3 == 0 {
			s = time.Unix(0, ns).UTC().Format("2006-01-02T15:04:05.000Z")
		}
		b := []byte(s)
		for range rng.IntN(3) {
			b[rng.IntN(len(b))] = alphabet[rng.IntN(len(alphabet))]
		}
		if rng.IntN(10) == 0 { // out-of-range fields: 2023-02-29, hour 24, second 60...
			copy(b[rng.IntN(len(b)-2):], []string{"29", "31", "24", "60", "00", "13"}[rng.IntN(6)])
		}
		fast, ok := parseTimeFast(b)
		slow, err := parseTime(string(b))
		if ok && (err != nil || fast != slow) {
			t.Fatalf("%q: fast path %d, parseTime %d, %v", b, fast, slow, err)
		}
		if ok {
			accepted++
		}
	}
	if accepted < 50_000 {
		t.Fatalf("fast path accepted %d of 200000 times; the usual form should take it", accepted)
	}
}

// TestDecodeUsageWithGrantAndSLAFieldNames: a usage record may carry the
// names grant and SLA events read (expires, status, end...) as any type;
// they are checked only for those events.
func TestDecodeUsageWithGrantAndSLAFieldNames(t *testing.T) {
	d := NewDecoder(testMeters(t))
	raw := `{"id":"e","customer":"c","meter":"sms","time":"2026-03-01T10:00:00Z","value":1,"expires":3600,"status":5,"end":true,"ok":"x","issue":[1],"outage":{}}`
	if _, err := d.Decode([]byte(raw), nil); err != nil {
		t.Errorf("Decode: %v, want the usage record", err)
	}
}
