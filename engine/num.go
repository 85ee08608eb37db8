package engine

import (
	"strconv"

	"github.com/shopspring/decimal"
)

// num is an exact decimal in 16 bytes without pointers, for the decimals
// every window holds: coef × 10^exp. shopspring's decimal.Decimal puts a
// big.Int behind every non-zero value (about 40 bytes and an allocation for
// each, and for each sum), which was a fifth of a window's memory.
//
// Invariant: exp <= 0 and |coef| < numLimit, so that two nums add, once
// aligned, without overflowing int64. A value outside that range is big:
// the num only says so, and its window keeps the value as a decimal in its
// extra state (see window.set). Nothing is ever rounded: a num that cannot
// hold a value exactly hands it to the decimal.
type num struct {
	coef int64
	exp  int32
	big  bool
}

// numLimit bounds a num's coefficient: 10^18 < 2^63 / 2.
const numLimit = 1_000_000_000_000_000_000

// pow10 holds 10^0 to 10^18.
var pow10 = func() (p [19]int64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// numInt returns v as a num, if it is within the limit.
func numInt(v int64) (num, bool) {
	return num{coef: v}, v > -numLimit && v < numLimit
}

// numOf returns d as a num, if it fits one.
func numOf(d decimal.Decimal) (num, bool) {
	if d.IsZero() {
		return num{}, true
	}
	if d.NumDigits() > 18 {
		return num{}, false
	}
	n := num{coef: d.CoefficientInt64(), exp: d.Exponent()}
	if n.exp > 0 {
		if n.exp > 18 || abs64(n.coef) >= numLimit/pow10[n.exp] {
			return num{}, false
		}
		n.coef, n.exp = n.coef*pow10[n.exp], 0
	}
	return n, true
}

// decimal returns n as a decimal; n must not be big.
func (n num) decimal() decimal.Decimal {
	if n.coef == 0 {
		return decimal.Decimal{}
	}
	return decimal.New(n.coef, n.exp)
}

// addNum returns a+b, if it fits a num.
func addNum(a, b num) (num, bool) {
	if a.exp != b.exp {
		if a.exp < b.exp {
			a, b = b, a
		}
		// b has the finer exponent: bring a to it.
		d := a.exp - b.exp
		if d > 18 || abs64(a.coef) >= numLimit/pow10[d] {
			return num{}, false
		}
		a.coef, a.exp = a.coef*pow10[d], b.exp
	}
	s := num{coef: a.coef + b.coef, exp: a.exp} // |a|, |b| < 10^18: no overflow
	return s, s.coef > -numLimit && s.coef < numLimit
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// appendNumText appends n as appendDecimalText appends n.decimal(): the
// shortest exact text, trailing zeros of the fraction trimmed.
func appendNumText(b []byte, n num) []byte {
	c, exp := n.coef, n.exp
	if exp == 0 || c == 0 {
		return strconv.AppendInt(b, c, 10)
	}
	if c < 0 {
		b = append(b, '-')
		c = -c
	}
	var buf [20]byte
	digits := strconv.AppendInt(buf[:0], c, 10)
	point := len(digits) + int(exp) // digits before the point
	var intPart, frac []byte
	leading := 0
	if point > 0 {
		intPart, frac = digits[:point], digits[point:]
	} else {
		intPart, frac, leading = []byte{'0'}, digits, -point
	}
	for len(frac) > 0 && frac[len(frac)-1] == '0' {
		frac = frac[:len(frac)-1]
	}
	b = append(b, intPart...)
	if len(frac) > 0 {
		b = append(b, '.')
		for range leading {
			b = append(b, '0')
		}
		b = append(b, frac...)
	}
	return b
}

// parseNum parses the text appendNumText and appendDecimalText write (an
// optional minus, digits, an optional point and digits), if it fits a num.
func parseNum(s []byte) (num, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 {
		return num{}, false
	}
	var n num
	digits, point := 0, false
	for _, c := range s {
		switch {
		case c == '.' && !point:
			point = true
		case c >= '0' && c <= '9':
			if n.coef == 0 && c == '0' {
				if point {
					n.exp--
				}
				continue // a leading zero adds no digit
			}
			if digits++; digits > 18 {
				return num{}, false
			}
			n.coef = n.coef*10 + int64(c-'0')
			if point {
				n.exp--
			}
		default:
			return num{}, false
		}
	}
	if s[len(s)-1] == '.' || s[0] == '.' {
		return num{}, false
	}
	if neg {
		n.coef = -n.coef
	}
	if n.coef == 0 {
		n.exp = 0
	}
	return n, true
}
