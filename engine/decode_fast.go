package engine

import (
	"bytes"
	"encoding/json"
)

// scanPlain reads the usual record shape in one pass, without building a
// parse tree: a plain-form object whose values are strings without escapes,
// numbers, and a dims object of such strings. Anything else (an escape, a
// null, a nested value other than dims, a key twice, a CloudEvent, bad
// JSON) makes it return false, and parseWire reads the record instead.
//
// Invariant (TestScanPlainAgreesWithParseWire, FuzzScanPlain): when it
// returns true, w is what parseWire would have produced.
func (d *Decoder) scanPlain(raw []byte, w *wireEvent, in *Interner) bool {
	s := scanner{b: raw}
	if !s.skip('{') {
		return false
	}
	if s.peekIs('}') {
		s.i++
		return s.end()
	}
	// text reads a string field into dst as one of: a fresh string, an
	// interned one, or an event type (interned by the decoder's meters).
	const (
		fresh = iota
		interned
		eventType
	)
	text := func(dst *string, how int) bool {
		v, ok := s.str()
		if !ok {
			return false
		}
		switch how {
		case interned:
			*dst = in.bytes(v)
		case eventType:
			if t, ok := d.types[string(v)]; ok {
				*dst = t
				return true
			}
			*dst = string(v)
		default:
			*dst = string(v)
		}
		return true
	}
	var seen uint16 // known keys read, one bit each
	for {
		key, ok := s.str()
		if !ok || !s.skip(':') {
			return false
		}
		var bit uint16
		switch string(key) {
		case "id":
			bit, ok = 1<<0, text(&w.ID, fresh)
		case "customer":
			bit, ok = 1<<1, text(&w.Customer, interned)
		case "meter":
			bit, ok = 1<<2, text(&w.Meter, eventType)
		case "time":
			bit = 1 << 3
			var v []byte
			if v, ok = s.str(); ok {
				if ns, fast := parseTimeFast(v); fast {
					w.TimeNs, w.hasTime = ns, true
				} else {
					w.Time = string(v)
				}
			}
		case "value":
			bit = 1 << 4
			var v []byte
			if v, ok = s.number(); ok {
				w.Value = json.RawMessage(append(w.valueBuf[:0], v...))
			}
		case "dims":
			bit, ok = 1<<5, s.dims(w, in)
		case "plan":
			bit, ok = 1<<6, text(&w.Plan, fresh)
		case "source":
			bit, ok = 1<<7, text(&w.Source, fresh)
		case "type":
			bit, ok = 1<<8, text(&w.Type, eventType)
		case "subject":
			bit, ok = 1<<9, text(&w.Subject, fresh)
		default:
			// CloudEvents, and any other key: parseWire's (it also refuses
			// a key twice, which this could not tell for unknown keys).
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		if s.skip(',') {
			continue
		}
		if !s.skip('}') {
			return false
		}
		return s.end()
	}
}

// dims reads a dims object of escape-free strings into w.Dims, sorted as
// wireDims leaves them.
func (s *scanner) dims(w *wireEvent, in *Interner) bool {
	if !s.skip('{') {
		return false
	}
	if s.peekIs('}') {
		s.i++
		return true // wireDims: no dims
	}
	var dims []Dim
	for {
		k, ok := s.str()
		if !ok || !s.skip(':') {
			return false
		}
		v, ok := s.str()
		if !ok {
			return false
		}
		for _, d := range dims {
			if d.Key == string(k) {
				return false
			}
		}
		dims = append(dims, Dim{Key: in.bytes(k), Value: in.bytes(v)})
		if len(dims) > maxDims {
			return false
		}
		if s.skip(',') {
			continue
		}
		if !s.skip('}') {
			return false
		}
		break
	}
	sorted, err := sortedDims(dims)
	if err != nil {
		return false // parseWire says why
	}
	w.Dims = sorted
	return true
}

// scanner reads the JSON subset of scanPlain.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// skip consumes c after optional whitespace.
func (s *scanner) skip(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) peekIs(c byte) bool {
	s.ws()
	return s.i < len(s.b) && s.b[s.i] == c
}

// end reports whether only whitespace is left.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

// str reads a string without escapes or control characters; its bytes alias
// the record (valid UTF-8, which DecodeAt checked).
func (s *scanner) str() ([]byte, bool) {
	if !s.skip('"') {
		return nil, false
	}
	rest := s.b[s.i:]
	n := bytes.IndexByte(rest, '"')
	if n < 0 {
		return nil, false
	}
	v := rest[:n]
	for _, c := range v {
		if c < 0x20 || c == '\\' {
			return nil, false
		}
	}
	s.i += n + 1
	return v, true
}

// number reads a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() ([]byte, bool) {
	s.ws()
	start := s.i
	b := s.b
	if s.i < len(b) && b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(b) && b[s.i] == '0':
		s.i++
	case s.i < len(b) && b[s.i] >= '1' && b[s.i] <= '9':
		s.digits()
	default:
		return nil, false
	}
	if s.i < len(b) && b[s.i] == '.' {
		s.i++
		if !s.digits() {
			return nil, false
		}
	}
	if s.i < len(b) && (b[s.i] == 'e' || b[s.i] == 'E') {
		s.i++
		if s.i < len(b) && (b[s.i] == '+' || b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			return nil, false
		}
	}
	return b[start:s.i], true
}

// digits consumes one or more digits.
func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}
