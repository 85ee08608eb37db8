// Package rating turns aggregated usage into money. It is pure: no I/O beyond
// parsing a plan from bytes, no clocks, no globals. Money is decimal.Decimal,
// never float.
//
// A Plan prices meters. Each meter has a Price whose Model names the pricing
// model; the first model is per_unit, and the Price type is where later
// models (package, tiers, allowances, bands...) add their fields.
package rating

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

// Model names a pricing model.
type Model string

const (
	// PerUnit charges quantity × unitPrice.
	PerUnit Model = "per_unit"
)

// RoundingMode says how an amount is rounded to the plan's decimals.
type RoundingMode string

const (
	RoundHalfUp   RoundingMode = "half_up"
	RoundHalfEven RoundingMode = "half_even"
	RoundUp       RoundingMode = "up"   // away from zero
	RoundDown     RoundingMode = "down" // toward zero
)

// Plan is a versioned price list. It is immutable after Parse and safe for
// concurrent use.
type Plan struct {
	ID string `yaml:"id" json:"id"`
	// ValidFrom is when this version of the plan comes into force; a
	// window is priced by the version in force at its start.
	ValidFrom time.Time `yaml:"validFrom" json:"validFrom"`
	Currency  string    `yaml:"currency" json:"currency"`
	Rounding  Rounding  `yaml:"rounding" json:"rounding"`
	// Timezone (IANA) is where time-of-day bands are read; default UTC.
	Timezone string           `yaml:"timezone" json:"timezone,omitempty"`
	Meters   map[string]Price `yaml:"meters" json:"meters"`
	// SLA are the plan's service-level objectives and their credits (see
	// Objective).
	SLA []Objective `yaml:"sla" json:"sla,omitempty"`

	loc *time.Location
}

// Rounding is applied once, to each window's amount, after pricing.
type Rounding struct {
	Decimals int32        `yaml:"decimals" json:"decimals"`
	Mode     RoundingMode `yaml:"mode" json:"mode"`
}

// Price prices one meter. Which fields apply depends on Model; the free
// allowance and minimum commitment apply to every model.
type Price struct {
	Model     Model           `yaml:"model" json:"model"`
	UnitPrice decimal.Decimal `yaml:"unitPrice" json:"unitPrice"`
	// Per is how many units every unit price of the meter (unitPrice, tier,
	// band and destination prices) is for: unitPrice "0.02" per "60" is
	// 0.02 a minute on a seconds meter, exact where 0.02/60 would repeat.
	// Charges divide once, on the period-to-date (or the event's) total.
	// Default 1.
	Per          *decimal.Decimal `yaml:"per" json:"per,omitempty"`
	PackageSize  decimal.Decimal  `yaml:"packageSize" json:"packageSize"`
	PackagePrice decimal.Decimal  `yaml:"packagePrice" json:"packagePrice"`
	Tiers        []Tier           `yaml:"tiers" json:"tiers"`
	Percentage   decimal.Decimal  `yaml:"percentage" json:"percentage"`
	// FreeAllowance is free units per billing period, used first.
	FreeAllowance decimal.Decimal `yaml:"freeAllowance" json:"freeAllowance"`
	// MinimumCommitment is the least a period charges for the meter; the
	// shortfall is trued up at period close.
	MinimumCommitment decimal.Decimal `yaml:"minimumCommitment" json:"minimumCommitment"`
	// FlatFee is a recurring fee per billing period, charged by the period,
	// not by usage.
	FlatFee decimal.Decimal `yaml:"flatFee" json:"flatFee"`
	// EventFee is charged once per event (a call's connect fee, a
	// payment's fixed fee); MinPerEvent and MaxPerEvent bound each event's
	// charge; Bands and Destinations pick each event's unit price. Any of
	// them makes the price per event (see event.go).
	EventFee     decimal.Decimal  `yaml:"eventFee" json:"eventFee"`
	MinPerEvent  *decimal.Decimal `yaml:"minPerEvent" json:"minPerEvent,omitempty"`
	MaxPerEvent  *decimal.Decimal `yaml:"maxPerEvent" json:"maxPerEvent,omitempty"`
	Bands        []Band           `yaml:"bands" json:"bands,omitempty"`
	Destinations *Destinations    `yaml:"destinations" json:"destinations,omitempty"`
	// Entitlement limits the meter's usage per billing period (see
	// Entitlement); nil: unlimited.
	Entitlement *Entitlement `yaml:"entitlement" json:"entitlement,omitempty"`
}

// UnmarshalYAML reads a rounding, keeping the values already set (Parse's
// defaults) for the keys it leaves out, so that an explicit decimals: 0 is
// told from none. Unknown keys are errors, as everywhere in a plan.
func (r *Rounding) UnmarshalYAML(node *yaml.Node) error {
	if node.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: rounding is a mapping such as {decimals: 2, mode: half_up}", node.Line)
	}
	for i := 0; i+1 < len(node.Content); i += 2 {
		key, value := node.Content[i], node.Content[i+1]
		var err error
		switch key.Value {
		case "decimals":
			err = value.Decode(&r.Decimals)
		case "mode":
			err = value.Decode(&r.Mode)
		default:
			return fmt.Errorf("line %d: field %s not found in rounding (decimals, mode)", key.Line, key.Value)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DefaultDecimals is the money precision when a plan does not set one.
const DefaultDecimals = 6

// Parse reads a plan from YAML or JSON (JSON is YAML) and validates it.
// Unknown fields are errors, so a typo never silently prices at zero.
func Parse(data []byte) (*Plan, error) {
	// Defaults first: what the file leaves out keeps them, and decimals: 0
	// (yen, whole units) stays 0.
	p := Plan{Rounding: Rounding{Decimals: DefaultDecimals, Mode: RoundHalfUp}}
	if err := parseYAMLStrict(data, &p); err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	if p.Rounding.Mode == "" {
		p.Rounding.Mode = RoundHalfUp
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Validate checks the plan and names the plan, field and problem.
func (p *Plan) Validate() error {
	id := p.ID
	if id == "" {
		return fmt.Errorf("plan: field id: missing; give the plan a name")
	}
	if len(p.Currency) != 3 || strings.ToUpper(p.Currency) != p.Currency {
		return fmt.Errorf("plan %s: field currency: %q is not an ISO 4217 code such as EUR", id, p.Currency)
	}
	if p.Rounding.Decimals < 0 || p.Rounding.Decimals > 10 {
		return fmt.Errorf("plan %s: field rounding.decimals: %d is outside 0..10", id, p.Rounding.Decimals)
	}
	switch p.Rounding.Mode {
	case RoundHalfUp, RoundHalfEven, RoundUp, RoundDown:
	default:
		return fmt.Errorf("plan %s: field rounding.mode: %q is not one of half_up, half_even, up, down", id, p.Rounding.Mode)
	}
	if p.Timezone != "" {
		loc, err := time.LoadLocation(p.Timezone)
		if err != nil {
			return fmt.Errorf("plan %s: field timezone: %q is not an IANA time zone such as Europe/London", id, p.Timezone)
		}
		p.loc = loc
	}
	if len(p.Meters) == 0 {
		return fmt.Errorf("plan %s: field meters: no meter is priced", id)
	}
	for _, name := range p.MeterNames() {
		price := p.Meters[name]
		where := fmt.Sprintf("plan %s: meters.%s", id, name)
		if err := price.validate(where); err != nil {
			return err
		}
		if err := price.validatePerEvent(where); err != nil {
			return err
		}
		if price.Entitlement != nil {
			if err := price.Entitlement.validate(where+".entitlement", &price); err != nil {
				return err
			}
		}
	}
	return p.validateSLA("plan " + id)
}

// MeterNames returns the priced meters, sorted.
func (p *Plan) MeterNames() []string {
	names := make([]string, 0, len(p.Meters))
	for n := range p.Meters {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Prices reports whether the plan prices meter.
func (p *Plan) Prices(meter string) bool {
	_, ok := p.Meters[meter]
	return ok
}

// Charge is the price of a quantity of one meter.
type Charge struct {
	// Plan is the id of the plan that priced it (a prorated period fee:
	// the plan in force at the period's end).
	Plan      string
	Amount    decimal.Decimal
	Currency  string
	UnitPrice decimal.Decimal
	// Lines explain the charge (tiers, allowance used); for Increment they
	// explain the period-to-date charge after the increment.
	Lines []Line
}

// Rate prices quantity units of meter on their own (a whole period), rounded
// per the plan.
func (p *Plan) Rate(meter string, quantity decimal.Decimal) (Charge, error) {
	return p.Increment(meter, decimal.Zero, quantity)
}

func (p *Plan) round(amount decimal.Decimal) decimal.Decimal {
	d := p.Rounding.Decimals
	switch p.Rounding.Mode {
	case RoundHalfEven:
		return amount.RoundBank(d)
	case RoundUp:
		return amount.RoundUp(d)
	case RoundDown:
		return amount.RoundDown(d)
	default:
		return amount.Round(d)
	}
}
