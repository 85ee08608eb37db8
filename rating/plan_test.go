package rating

import (
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func TestParseAndRate(t *testing.T) {
	plan, err := Parse([]byte(`
id: p1
currency: EUR
rounding: {decimals: 2, mode: half_even}
meters:
  sms: {model: per_unit, unitPrice: "0.045"}
  voice_seconds: {model: per_unit, unitPrice: 0.0004}
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		meter, quantity, want string
	}{
		{"sms", "1", "0.04"},   // 0.045 half-even to 2 places
		{"sms", "3", "0.14"},   // 0.135 -> 0.14
		{"sms", "0", "0"},      // zero usage
		{"sms", "-2", "-0.09"}, // negative adjustment: -0.09
		{"voice_seconds", "1000000000000000", "400000000000"},
	}
	for _, tt := range tests {
		c, err := plan.Rate(tt.meter, decimal.RequireFromString(tt.quantity))
		if err != nil {
			t.Fatalf("Rate(%s, %s): %v", tt.meter, tt.quantity, err)
		}
		if c.Amount.String() != tt.want || c.Currency != "EUR" {
			t.Errorf("Rate(%s, %s) = %s %s, want %s EUR", tt.meter, tt.quantity, c.Amount, c.Currency, tt.want)
		}
	}
	if _, err := plan.Rate("data", decimal.NewFromInt(1)); err == nil {
		t.Error("rating an unpriced meter succeeded")
	}
}

func TestRoundingModes(t *testing.T) {
	for _, tt := range []struct {
		mode RoundingMode
		in   string
		want string
	}{
		{RoundHalfUp, "0.125", "0.13"}, {RoundHalfEven, "0.125", "0.12"},
		{RoundUp, "0.121", "0.13"}, {RoundDown, "0.129", "0.12"},
		{RoundUp, "-0.121", "-0.13"}, {RoundDown, "-0.129", "-0.12"},
	} {
		p := &Plan{Rounding: Rounding{Decimals: 2, Mode: tt.mode}}
		if got := p.round(decimal.RequireFromString(tt.in)).String(); got != tt.want {
			t.Errorf("%s(%s) = %s, want %s", tt.mode, tt.in, got, tt.want)
		}
	}
}

func TestParseRejectsBadPlans(t *testing.T) {
	for _, tt := range []struct{ name, plan, wantInError string }{
		{"missing currency", "id: p\nmeters: {sms: {model: per_unit, unitPrice: '1'}}", "currency"},
		{"negative price", "id: p\ncurrency: EUR\nmeters: {sms: {model: per_unit, unitPrice: '-1'}}", "meters.sms.unitPrice"},
		{"unknown model", "id: p\ncurrency: EUR\nmeters: {sms: {model: magic}}", "meters.sms.model"},
		{"typo field", "id: p\ncurrency: EUR\nmeters: {sms: {model: per_unit, unitprice: '1'}}", "unitprice"},
		{"no meters", "id: p\ncurrency: EUR", "meters"},
		{"no id", "currency: EUR\nmeters: {sms: {model: per_unit, unitPrice: '1'}}", "id"},
		{"bad price", "id: p\ncurrency: EUR\nmeters: {sms: {model: per_unit, unitPrice: 'cheap'}}", "cheap"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.plan))
			if err == nil || !strings.Contains(err.Error(), tt.wantInError) {
				t.Errorf("Parse error %v, want one mentioning %q", err, tt.wantInError)
			}
		})
	}
}
