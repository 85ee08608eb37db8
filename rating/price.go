package rating

import (
	"fmt"

	"github.com/shopspring/decimal"
)

// Models beyond per_unit. Each prices a period-to-date quantity; a window's
// charge is the difference of the rounded period-to-date charges after and
// before it (see Price.Increment), so that a period's window charges always
// add up to the charge of its total.
const (
	// Package charges packagePrice per started block of packageSize units.
	Package Model = "package"
	// Graduated charges each unit at the price of the tier it falls in, plus
	// each reached tier's flat fee.
	Graduated Model = "graduated"
	// Volume charges every unit at the price of the tier the total reaches,
	// plus that tier's flat fee. A window's charge can be negative.
	Volume Model = "volume"
	// Percentage charges percentage of the quantity (a money amount carried
	// by the events, e.g. a transaction value).
	Percentage Model = "percentage"
)

// Tier is one step of graduated or volume pricing. UpTo is the inclusive
// upper bound of the tier in units; the last tier has none (unbounded).
type Tier struct {
	UpTo      *decimal.Decimal `yaml:"upTo" json:"upTo,omitempty"`
	UnitPrice decimal.Decimal  `yaml:"unitPrice" json:"unitPrice"`
	FlatFee   decimal.Decimal  `yaml:"flatFee" json:"flatFee"`
}

// Line explains one part of a charge: units priced at a unit price, with the
// tier they fell in, or a fee, or free units.
type Line struct {
	Description string          `json:"description"`
	Units       decimal.Decimal `json:"units"`
	UnitPrice   decimal.Decimal `json:"unit_price"`
	Amount      decimal.Decimal `json:"amount"`
}

// validate checks the model's own fields; where names "plan P: meters.M".
func (p *Price) validate(where string) error {
	neg := func(field string, d decimal.Decimal) error {
		if d.IsNegative() {
			return fmt.Errorf("%s.%s: %s is negative", where, field, d)
		}
		return nil
	}
	for _, f := range []struct {
		name string
		v    decimal.Decimal
	}{{"unitPrice", p.UnitPrice}, {"packagePrice", p.PackagePrice}, {"percentage", p.Percentage},
		{"freeAllowance", p.FreeAllowance}, {"minimumCommitment", p.MinimumCommitment}, {"flatFee", p.FlatFee}} {
		if err := neg(f.name, f.v); err != nil {
			return err
		}
	}
	if p.Per != nil {
		switch {
		case !p.Per.IsPositive():
			return fmt.Errorf("%s.per: %s must be positive (the units each unit price is for, e.g. 60)", where, p.Per)
		case p.Model == Package || p.Model == Percentage:
			return fmt.Errorf("%s.per: a %s price has no unit price to divide; per applies to per_unit, graduated and volume prices", where, p.Model)
		}
	}
	switch p.Model {
	case PerUnit:
	case Package:
		if !p.PackageSize.IsPositive() {
			return fmt.Errorf("%s.packageSize: %s must be positive (units per block)", where, p.PackageSize)
		}
	case Graduated, Volume:
		if len(p.Tiers) == 0 {
			return fmt.Errorf("%s.tiers: a %s price needs tiers", where, p.Model)
		}
		var prev *decimal.Decimal
		for i, t := range p.Tiers {
			at := fmt.Sprintf("%s.tiers[%d]", where, i)
			if err := neg(fmt.Sprintf("tiers[%d].unitPrice", i), t.UnitPrice); err != nil {
				return err
			}
			if err := neg(fmt.Sprintf("tiers[%d].flatFee", i), t.FlatFee); err != nil {
				return err
			}
			if t.UpTo == nil {
				if i != len(p.Tiers)-1 {
					return fmt.Errorf("%s.upTo: only the last tier may be unbounded", at)
				}
				continue
			}
			if !t.UpTo.IsPositive() {
				return fmt.Errorf("%s.upTo: %s must be positive", at, t.UpTo)
			}
			if prev != nil && !t.UpTo.GreaterThan(*prev) {
				return fmt.Errorf("%s.upTo: %s does not follow the previous tier's %s; tiers must be in increasing order without overlap", at, t.UpTo, prev)
			}
			prev = t.UpTo
		}
		if p.Tiers[len(p.Tiers)-1].UpTo != nil {
			return fmt.Errorf("%s.tiers: the last tier must be unbounded (no upTo), so that every quantity has a price", where)
		}
	case Percentage:
		if p.Percentage.GreaterThan(decimal.NewFromInt(1)) {
			return fmt.Errorf("%s.percentage: %s is above 1; write 2.9%% as 0.029", where, p.Percentage)
		}
	case "":
		return fmt.Errorf("%s.model: missing; use per_unit, package, graduated, volume or percentage", where)
	default:
		return fmt.Errorf("%s.model: unknown model %q; use per_unit, package, graduated, volume or percentage", where, p.Model)
	}
	return nil
}

// perPrecision is the number of decimal places a division by Price.Per
// keeps before the plan's rounding: far beyond any plan's 10 decimals, so
// that the rounded charge is the exact quotient's.
const perPrecision = 30

// unitsAt prices units at unitPrice per p.Per units.
func (p *Price) unitsAt(units, unitPrice decimal.Decimal) decimal.Decimal {
	if p.Per == nil {
		return units.Mul(unitPrice)
	}
	return units.Mul(unitPrice).DivRound(*p.Per, perPrecision)
}

// perLabel is what a line of a unit price says about Per.
func (p *Price) perLabel() string {
	if p.Per == nil {
		return ""
	}
	return fmt.Sprintf(" (price per %s units)", p.Per)
}

// Charge returns the unrounded charge of a period-to-date quantity and its
// explanation. The free allowance is used first; a negative or zero
// billable quantity costs nothing.
func (p *Price) Charge(periodToDate decimal.Decimal) (decimal.Decimal, []Line) {
	var lines []Line
	billable := periodToDate
	if p.FreeAllowance.IsPositive() {
		free := decimal.Min(decimal.Max(periodToDate, decimal.Zero), p.FreeAllowance)
		if free.IsPositive() {
			lines = append(lines, Line{Description: "free allowance", Units: free, UnitPrice: decimal.Zero, Amount: decimal.Zero})
		}
		billable = periodToDate.Sub(free)
	}
	if !billable.IsPositive() && p.Model != PerUnit && p.Model != Percentage {
		return decimal.Zero, lines
	}
	total := decimal.Zero
	add := func(l Line) {
		lines = append(lines, l)
		total = total.Add(l.Amount)
	}
	switch p.Model {
	case PerUnit:
		add(Line{Description: "per unit" + p.perLabel(), Units: billable, UnitPrice: p.UnitPrice, Amount: p.unitsAt(billable, p.UnitPrice)})
	case Percentage:
		add(Line{Description: "percentage", Units: billable, UnitPrice: p.Percentage, Amount: billable.Mul(p.Percentage)})
	case Package:
		blocks := billable.Div(p.PackageSize).Ceil()
		add(Line{Description: fmt.Sprintf("packages of %s", p.PackageSize), Units: blocks, UnitPrice: p.PackagePrice, Amount: blocks.Mul(p.PackagePrice)})
	case Graduated:
		lower := decimal.Zero
		for i, t := range p.Tiers {
			if !billable.GreaterThan(lower) {
				break
			}
			upper := billable
			if t.UpTo != nil && t.UpTo.LessThan(billable) {
				upper = *t.UpTo
			}
			units := upper.Sub(lower)
			add(Line{Description: fmt.Sprintf("tier %d%s", i+1, p.perLabel()), Units: units, UnitPrice: t.UnitPrice, Amount: p.unitsAt(units, t.UnitPrice)})
			if t.FlatFee.IsPositive() {
				add(Line{Description: fmt.Sprintf("tier %d flat fee", i+1), Units: decimal.NewFromInt(1), UnitPrice: t.FlatFee, Amount: t.FlatFee})
			}
			if t.UpTo != nil {
				lower = *t.UpTo
			}
		}
	case Volume:
		for i, t := range p.Tiers {
			if t.UpTo != nil && billable.GreaterThan(*t.UpTo) {
				continue
			}
			add(Line{Description: fmt.Sprintf("tier %d (volume)%s", i+1, p.perLabel()), Units: billable, UnitPrice: t.UnitPrice, Amount: p.unitsAt(billable, t.UnitPrice)})
			if t.FlatFee.IsPositive() {
				add(Line{Description: fmt.Sprintf("tier %d flat fee", i+1), Units: decimal.NewFromInt(1), UnitPrice: t.FlatFee, Amount: t.FlatFee})
			}
			break
		}
	}
	return total, lines
}

// Increment is the charge of usage that moved a period-to-date quantity
// from before to after: the rounded charge after minus the rounded charge
// before. Rounding the cumulative charges (not the differences) makes the
// increments of a period telescope: their sum is exactly the rounded charge
// of the period total. It may be negative (volume tiers, adjustments).
func (pl *Plan) Increment(meter string, before, after decimal.Decimal) (Charge, error) {
	price, ok := pl.Meters[meter]
	if !ok {
		return Charge{}, fmt.Errorf("plan %s: meter %q is not priced", pl.ID, meter)
	}
	if price.PerEvent() {
		return Charge{}, fmt.Errorf("plan %s: meter %q is priced per event; its charges come from RateEvent and IncrementEvents", pl.ID, meter)
	}
	amountBefore, _ := price.Charge(before)
	amountAfter, lines := price.Charge(after)
	return Charge{
		Plan:      pl.ID,
		Amount:    pl.round(amountAfter).Sub(pl.round(amountBefore)),
		Currency:  pl.Currency,
		UnitPrice: price.UnitPrice,
		Lines:     lines,
	}, nil
}

// PeriodFee is what a closed billing period adds for meter on top of its
// usage charges when one plan was in force all period: the flat fee plus
// the minimum-commitment true-up, given the usage charged in the period.
// ok is false when the meter has neither.
func (pl *Plan) PeriodFee(meter string, usageCharged decimal.Decimal) (Charge, bool) {
	c, ok, _ := ProratedPeriodFee([]Share{{Plan: pl, Fraction: decimal.NewFromInt(1)}}, meter, usageCharged)
	return c, ok // one plan: no currency mismatch
}

// Share is the part of a billing period a plan was in force for.
type Share struct {
	Plan     *Plan
	Fraction decimal.Decimal // of the period's duration; shares add up to at most 1
}

// ProratedPeriodFee is PeriodFee over a period whose plan changed: flat fee
// and commitment are each plan's, weighted by the share of the period it was
// in force; the true-up compares the prorated commitment with the usage
// charged in the whole period. Rounded once per the first share's plan.
func ProratedPeriodFee(shares []Share, meter string, usageCharged decimal.Decimal) (Charge, bool, error) {
	if len(shares) == 0 {
		return Charge{}, false, nil
	}
	first := shares[0].Plan
	flat, commitment := decimal.Zero, decimal.Zero
	found := false
	for _, sh := range shares {
		if sh.Plan.Currency != first.Currency {
			return Charge{}, false, fmt.Errorf("plans %s (%s) and %s (%s) share a period in different currencies", first.ID, first.Currency, sh.Plan.ID, sh.Plan.Currency)
		}
		price, ok := sh.Plan.Meters[meter]
		if !ok || (price.FlatFee.IsZero() && price.MinimumCommitment.IsZero()) {
			continue
		}
		found = true
		flat = flat.Add(price.FlatFee.Mul(sh.Fraction))
		commitment = commitment.Add(price.MinimumCommitment.Mul(sh.Fraction))
	}
	if !found {
		return Charge{}, false, nil
	}
	suffix := ""
	if len(shares) > 1 || !shares[0].Fraction.Equal(decimal.NewFromInt(1)) {
		suffix = " (prorated)"
	}
	var lines []Line
	amount := first.round(flat)
	if amount.IsPositive() {
		lines = append(lines, Line{Description: "flat fee" + suffix, Units: decimal.NewFromInt(1), UnitPrice: amount, Amount: amount})
	}
	if shortfall := first.round(commitment).Sub(usageCharged); shortfall.IsPositive() {
		lines = append(lines, Line{Description: "minimum commitment true-up" + suffix, Units: decimal.NewFromInt(1), UnitPrice: shortfall, Amount: shortfall})
		amount = amount.Add(shortfall)
	}
	return Charge{Plan: shares[len(shares)-1].Plan.ID, Amount: amount, Currency: first.Currency, Lines: lines}, true, nil
}
