package rating

import (
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

const catalogYAML = `
plans:
  - id: basic
    currency: EUR
    validFrom: 2026-01-01T00:00:00Z
    meters: {sms: {model: per_unit, unitPrice: "0.10"}}
  - id: basic
    currency: EUR
    validFrom: 2026-03-15T00:00:00Z
    meters: {sms: {model: per_unit, unitPrice: "0.08"}}
  - id: pro
    currency: EUR
    meters: {sms: {model: per_unit, unitPrice: "0.05"}, mms: {model: per_unit, unitPrice: "0.20"}}
`

func TestCatalogVersions(t *testing.T) {
	c, err := ParseCatalog([]byte(catalogYAML))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		at, want string
	}{
		{"2026-03-14T23:59:59Z", "0.1"},
		{"2026-03-15T00:00:00Z", "0.08"},
		{"2027-01-01T00:00:00Z", "0.08"},
	} {
		at, _ := time.Parse(time.RFC3339, tt.at)
		p, err := c.Plan("basic", at)
		if err != nil || p.Meters["sms"].UnitPrice.String() != tt.want {
			t.Errorf("basic at %s: %v, %v; want unit price %s", tt.at, p, err, tt.want)
		}
	}
	if _, err := c.Plan("basic", time.Date(2025, 12, 31, 0, 0, 0, 0, time.UTC)); err == nil || !strings.Contains(err.Error(), "no version in force") {
		t.Errorf("basic before its first version: %v", err)
	}
	if got := strings.Join(c.IDs(), ","); got != "basic,pro" {
		t.Errorf("IDs = %s", got)
	}
	if _, err := ParseCatalog([]byte(strings.Replace(catalogYAML, "2026-03-15", "2026-01-01", 1))); err == nil || !strings.Contains(err.Error(), "two versions") {
		t.Errorf("two versions with one validFrom: %v", err)
	}
}

func TestSubscriptions(t *testing.T) {
	c, _ := ParseCatalog([]byte(catalogYAML))
	day := func(s string) time.Time { t, _ := time.Parse(time.DateOnly, s); return t }
	subs, err := NewSubscriptions([]Subscription{
		{Customer: "ann", Plan: "basic", Start: day("2026-01-01"), End: day("2026-03-10")},
		{Customer: "ann", Plan: "pro", Start: day("2026-03-10")},
		{Customer: "bob", Plan: "pro", Start: day("2026-02-01"), End: day("2026-02-20")},
	}, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		customer, at, plan string
		ok                 bool
	}{
		{"ann", "2026-03-09", "basic", true}, {"ann", "2026-03-10", "pro", true}, {"ann", "2025-12-31", "", false},
		{"bob", "2026-02-19", "pro", true}, {"bob", "2026-02-20", "", false}, {"eve", "2026-02-01", "", false},
	} {
		if plan, ok := subs.Lookup(tt.customer, day(tt.at)); plan != tt.plan || ok != tt.ok {
			t.Errorf("Lookup(%s, %s) = %s, %v; want %s, %v", tt.customer, tt.at, plan, ok, tt.plan, tt.ok)
		}
	}
	for _, bad := range []struct {
		subs []Subscription
		want string
	}{
		{[]Subscription{{Customer: "a", Plan: "gold", Start: day("2026-01-01")}}, `no plan "gold"`},
		{[]Subscription{{Customer: "a", Plan: "pro", Start: day("2026-02-01"), End: day("2026-01-01")}}, "is not after start"},
		{[]Subscription{{Customer: "a", Plan: "pro", Start: day("2026-01-01")}, {Customer: "a", Plan: "basic", Start: day("2026-02-01")}}, "overlap"},
		{[]Subscription{{Customer: "a", Plan: "pro"}}, "start: missing"},
	} {
		if _, err := NewSubscriptions(bad.subs, c); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("NewSubscriptions(%+v) = %v, want an error with %q", bad.subs, err, bad.want)
		}
	}
}

// FuzzParseCatalog: no plan file may panic the parser or yield a catalog
// whose plans fail validation or price a quantity inconsistently.
func FuzzParseCatalog(f *testing.F) {
	f.Add([]byte(catalogYAML))
	f.Add([]byte("id: p\ncurrency: EUR\nmeters: {m: {model: graduated, tiers: [{upTo: \"10\", unitPrice: \"1\"}, {unitPrice: \"0.5\"}]}}"))
	f.Add([]byte("id: p\ncurrency: EUR\nmeters: {m: {model: volume, freeAllowance: \"5\", tiers: [{unitPrice: \"1\"}]}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCatalog(data)
		if err != nil {
			return
		}
		for _, p := range c.Versions() {
			if err := p.Validate(); err != nil {
				t.Fatalf("parsed a plan that fails validation: %v", err)
			}
			for _, name := range p.MeterNames() {
				total, _ := p.Rate(name, decimal.NewFromInt(1234))
				a, _ := p.Increment(name, decimal.Zero, decimal.NewFromInt(1000))
				b, _ := p.Increment(name, decimal.NewFromInt(1000), decimal.NewFromInt(1234))
				if !a.Amount.Add(b.Amount).Equal(total.Amount) {
					t.Fatalf("increments %s + %s != total %s", a.Amount, b.Amount, total.Amount)
				}
			}
		}
	})
}

func TestSegmentsAndProration(t *testing.T) {
	c, _ := ParseCatalog([]byte(catalogYAML))
	day := func(s string) time.Time { t, _ := time.Parse(time.DateOnly, s); return t }
	subs, err := NewSubscriptions([]Subscription{
		{Customer: "ann", Plan: "pro", Start: day("2026-03-05"), End: day("2026-03-10")},
		{Customer: "ann", Plan: "basic", Start: day("2026-03-20")},
	}, c)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range subs.Segments("ann", "basic", day("2026-03-01"), day("2026-04-01")) {
		got = append(got, s.Plan+" "+s.Start.Format("02")+"-"+s.End.Format("02"))
	}
	if want := "basic 01-05,pro 05-10,basic 10-01"; strings.Join(got, ",") != want {
		t.Errorf("segments %v, want %s", got, want)
	}
	if segs := subs.Segments("ann", "", day("2026-03-01"), day("2026-04-01")); len(segs) != 2 {
		t.Errorf("without a default plan the gaps stay empty: %v", segs)
	}

	flat := func(fee string) *Plan {
		p, err := Parse([]byte("id: p" + fee + "\ncurrency: EUR\nrounding: {decimals: 2}\nmeters: {sms: {model: per_unit, unitPrice: '1', flatFee: '" + fee + "'}}"))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	third := decimal.NewFromInt(1).Div(decimal.NewFromInt(3))
	c2, ok, err := ProratedPeriodFee([]Share{{Plan: flat("9"), Fraction: third}, {Plan: flat("30"), Fraction: decimal.NewFromInt(1).Sub(third)}}, "sms", decimal.Zero)
	if err != nil || !ok || c2.Amount.String() != "23" {
		t.Errorf("prorated flat fee = %v, %v, %v; want 23 (9/3 + 30x2/3)", c2.Amount, ok, err)
	}
}

// TestTimelineEvents: subscription events apply on top of the configured
// subscriptions, in order; at equal times the event wins.
func TestTimelineEvents(t *testing.T) {
	c, _ := ParseCatalog([]byte(catalogYAML))
	day := func(s string) time.Time { t, _ := time.Parse(time.DateOnly, s); return t }
	subs, err := NewSubscriptions([]Subscription{{Customer: "ann", Plan: "pro", Start: day("2026-03-01"), End: day("2026-06-01")}}, c)
	if err != nil {
		t.Fatal(err)
	}
	tl := subs.Timeline("ann", []Change{{At: day("2026-03-10"), Plan: "basic"}, {At: day("2026-03-20")}, {At: day("2026-03-01"), Plan: "basic"}})
	for _, tt := range []struct {
		at   string
		plan string
	}{{"2026-02-28", ""}, {"2026-03-01", "basic"}, {"2026-03-15", "basic"}, {"2026-03-20", ""}, {"2026-05-01", ""}, {"2026-06-01", ""}} {
		if got, _ := tl.Lookup(day(tt.at)); got != tt.plan {
			t.Errorf("at %s: plan %q, want %q", tt.at, got, tt.plan)
		}
	}
	var got []string
	for _, s := range tl.Segments("", day("2026-03-01"), day("2026-04-01")) {
		got = append(got, s.Plan+" "+s.Start.Format("02")+"-"+s.End.Format("02"))
	}
	if want := "basic 01-20"; strings.Join(got, ",") != want {
		t.Errorf("segments %v, want %s", got, want)
	}
	if cust := subs.Customers(); len(cust) != 1 || cust[0] != "ann" {
		t.Errorf("customers %v", cust)
	}
}
