package rating

import (
	"math/rand/v2"
	"testing"

	"github.com/shopspring/decimal"
)

// randomPrice builds a valid price of a random model.
func randomPrice(rng *rand.Rand) Price {
	money := func() decimal.Decimal { return decimal.New(rng.Int64N(100000), -int32(rng.IntN(7))) }
	p := Price{FreeAllowance: decimal.Zero}
	if rng.IntN(3) == 0 {
		p.FreeAllowance = decimal.NewFromInt(rng.Int64N(50))
	}
	switch rng.IntN(5) {
	case 0:
		p.Model, p.UnitPrice = PerUnit, money()
	case 1:
		p.Model, p.PackageSize, p.PackagePrice = Package, decimal.NewFromInt(1+rng.Int64N(100)), money()
	case 2, 3:
		p.Model = Graduated
		if rng.IntN(2) == 0 {
			p.Model = Volume
		}
		bound := int64(0)
		for range rng.IntN(4) {
			bound += 1 + rng.Int64N(200)
			upTo := decimal.NewFromInt(bound)
			p.Tiers = append(p.Tiers, Tier{UpTo: &upTo, UnitPrice: money(), FlatFee: decimal.New(rng.Int64N(3)*500, -2)})
		}
		p.Tiers = append(p.Tiers, Tier{UnitPrice: money()})
	default:
		p.Model, p.Percentage = Percentage, decimal.New(rng.Int64N(1000), -3)
	}
	return p
}

// TestPropertyIncrementsAddUp: for random plans and random usage (including
// negative adjustments), the window charges of a period add up exactly to
// the charge of the period's total.
func TestPropertyIncrementsAddUp(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 2))
	modes := []RoundingMode{RoundHalfUp, RoundHalfEven, RoundUp, RoundDown}
	for i := range 3000 {
		plan := &Plan{ID: "p", Currency: "EUR", Rounding: Rounding{Decimals: int32(rng.IntN(7)), Mode: modes[rng.IntN(4)]},
			Meters: map[string]Price{"m": randomPrice(rng)}}
		if err := plan.Validate(); err != nil {
			t.Fatalf("case %d: generated an invalid plan: %v", i, err)
		}
		ptd, sum := decimal.Zero, decimal.Zero
		for range 1 + rng.IntN(30) {
			delta := decimal.New(rng.Int64N(10000)-1000, -int32(rng.IntN(4)))
			c, err := plan.Increment("m", ptd, ptd.Add(delta))
			if err != nil {
				t.Fatal(err)
			}
			ptd, sum = ptd.Add(delta), sum.Add(c.Amount)
		}
		total, _ := plan.Rate("m", ptd)
		if !sum.Equal(total.Amount) {
			t.Fatalf("case %d (%+v): window charges add up to %s, the total of %s is charged %s", i, plan.Meters["m"], sum, ptd, total.Amount)
		}
	}
}
