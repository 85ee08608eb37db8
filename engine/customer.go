package engine

import (
	"fmt"
	"time"
)

// Customer holds the settings of one customer that shape its windows and
// billing periods.
type Customer struct {
	ID string `yaml:"id" json:"id"`
	// Timezone is an IANA zone (Europe/Paris); windows of meters aligned to
	// the customer and billing periods follow it. Default: the engine's.
	Timezone string `yaml:"timezone" json:"timezone"`
	// BillingAnchorDay is the day of the month (1..28) the customer's
	// billing periods start on. Default: the engine's.
	BillingAnchorDay int `yaml:"billingAnchorDay" json:"billingAnchorDay"`
}

type customerSpec struct {
	loc       *time.Location
	anchorDay int
}

// customers is an immutable registry of customer settings, safe for
// concurrent use.
type customers struct {
	byID     map[string]customerSpec
	fallback customerSpec
}

func newCustomers(list []Customer, timezone string, anchorDay int) (*customers, error) {
	def, err := time.LoadLocation(timezone)
	if err != nil {
		return nil, configError("timezone", "%q is not an IANA time zone such as Europe/Paris: %v", timezone, err)
	}
	c := &customers{byID: make(map[string]customerSpec, len(list)), fallback: customerSpec{loc: def, anchorDay: anchorDay}}
	for i, cu := range list {
		spec := c.fallback
		if cu.ID == "" {
			return nil, configError(fmt.Sprintf("customers[%d].id", i), "empty")
		}
		if _, dup := c.byID[cu.ID]; dup {
			return nil, configError("customers."+cu.ID, "listed twice")
		}
		if cu.Timezone != "" {
			if spec.loc, err = time.LoadLocation(cu.Timezone); err != nil {
				return nil, configError("customers."+cu.ID+".timezone", "%q is not an IANA time zone: %v", cu.Timezone, err)
			}
		}
		if cu.BillingAnchorDay != 0 {
			if cu.BillingAnchorDay < 1 || cu.BillingAnchorDay > 28 {
				return nil, configError("customers."+cu.ID+".billingAnchorDay", "%d is outside 1..28", cu.BillingAnchorDay)
			}
			spec.anchorDay = cu.BillingAnchorDay
		}
		c.byID[cu.ID] = spec
	}
	return c, nil
}

// listed reports whether id has settings of its own.
func (c *customers) listed(id string) bool {
	_, ok := c.byID[id]
	return ok
}

func (c *customers) get(id string) customerSpec {
	if spec, ok := c.byID[id]; ok {
		return spec
	}
	return c.fallback
}
