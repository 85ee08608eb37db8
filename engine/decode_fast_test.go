package engine

import (
	"bytes"
	"reflect"
	"testing"
	"time"
)

// scanPlainCases are records scanPlain reads (ok) or leaves to parseWire.
var scanPlainCases = []struct {
	raw string
	ok  bool
}{
	{`{"id":"e1","customer":"c1","meter":"sms","time":"2026-03-01T10:00:00Z","value":1,"dims":{"destination":"uk"}}`, true},
	{` { "customer" : "c1" , "dims" : { "b" : "2" , "a" : "1" } , "id" : "e1" , "meter" : "x" , "time" : "2026-03-01T10:00:00.5+01:00" , "value" : -12.5e3 } `, true},
	{`{"type":"subscription.created","id":"s1","customer":"c1","plan":"pro","time":"2026-03-01T00:00:00Z"}`, true},
	{`{"id":"e1","dims":{}}`, true},
	{`{}`, true},
	{`{"id":"e\u0031"}`, false},                // an escape
	{`{"id":null}`, false},                     // null
	{`{"id":"a","id":"b"}`, false},             // a key twice
	{`{"dims":{"a":"1","a":"2"}}`, false},      // a dim twice
	{`{"value":"12"}`, false},                  // a string value
	{`{"value":01}`, false},                    // not a JSON number
	{`{"value":1.}`, false},                    // not a JSON number
	{`{"value":-}`, false},                     // not a JSON number
	{`{"extra":1,"id":"e1"}`, false},           // an unknown key
	{`{"specversion":"1.0","id":"e1"}`, false}, // a CloudEvent
	{`{"id":"e1"`, false},                      // truncated
	{`{"id":"e1"} x`, false},                   // trailing bytes
	{`{"id":"e1",}`, false},                    // trailing comma
	{"{\"id\":\"a\tb\"}", false},               // a control character
	{`{"dims":{"a":1}}`, false},                // a dim that is not a string
}

// TestScanPlainAgreesWithParseWire: what scanPlain reads, parseWire reads
// the same way.
func TestScanPlainAgreesWithParseWire(t *testing.T) {
	d := NewDecoder(testMeters(t))
	for _, c := range scanPlainCases {
		var fast wireEvent
		if ok := d.scanPlain([]byte(c.raw), &fast, nil); ok != c.ok {
			t.Errorf("scanPlain(%s) = %v, want %v", c.raw, ok, c.ok)
			continue
		}
		if c.ok {
			checkAgrees(t, d, []byte(c.raw), &fast)
		}
	}
}

func checkAgrees(t *testing.T, d *Decoder, raw []byte, fast *wireEvent) {
	t.Helper()
	var slow wireEvent
	if err := d.parseWire(raw, &slow); err != nil {
		t.Fatalf("scanPlain read %s, parseWire refuses it: %v", raw, err)
	}
	fast.valueBuf, slow.valueBuf = [32]byte{}, [32]byte{}
	if !bytes.Equal(fast.Value, slow.Value) {
		t.Fatalf("%s: value %q, parseWire %q", raw, fast.Value, slow.Value)
	}
	fast.Value, slow.Value = nil, nil
	if !reflect.DeepEqual(*fast, slow) {
		t.Fatalf("%s:\nscanPlain %+v\nparseWire %+v", raw, *fast, slow)
	}
}

func FuzzScanPlain(f *testing.F) {
	for _, c := range scanPlainCases {
		f.Add([]byte(c.raw))
	}
	d := NewDecoder(testMeters(f))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var fast wireEvent
		if d.scanPlain(raw, &fast, NewInterner()) {
			checkAgrees(t, d, raw, &fast)
		}
	})
}

// FuzzDecodeInterned: decoding with an interner gives the events decoding
// without one gives, for meters grouping by every dimension, by some, and
// by none.
func FuzzDecodeInterned(f *testing.F) {
	for _, c := range scanPlainCases {
		f.Add([]byte(c.raw))
	}
	f.Add([]byte(`{"id":"e1","customer":"c1","meter":"calls","time":"2026-03-01T10:00:00Z","value":3,"dims":{"z":"1","destination":"u\\,k","b":"x=y"}}`))
	f.Add([]byte(`{"id":"e2","customer":"c1","meter":"calls","time":"2026-03-01T10:00:00Z","value":3,"dims":{"destination":"uk","rat":"5G"}}`))
	meters, err := CompileMeters([]Meter{
		{Name: "all", EventTypes: []string{"calls"}, GroupBy: []string{"*"}},
		{Name: "some", EventTypes: []string{"calls"}, GroupBy: []string{"rat", "destination"}},
		{Name: "none", EventTypes: []string{"calls"}},
	}, time.Minute)
	if err != nil {
		f.Fatal(err)
	}
	d := NewDecoder(meters)
	in := NewInterner()
	f.Fuzz(func(t *testing.T, raw []byte) {
		want, werr := d.DecodeAt(raw, nil, time.Time{})
		for range 2 { // the second time, from the interned strings
			got, gerr := d.DecodeInterned(raw, nil, time.Time{}, in)
			if (werr == nil) != (gerr == nil) || !reflect.DeepEqual(got, want) {
				t.Fatalf("%s:\ninterned %+v %v\nplain    %+v %v", raw, got, gerr, want, werr)
			}
		}
	})
}
