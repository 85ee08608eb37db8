package rating

import (
	"bytes"
	"fmt"
	"sort"
	"time"

	"gopkg.in/yaml.v3"
)

// Catalog holds every plan and its versions. A plan file holds one plan, or
// a list under plans:; entries with the same id are versions of one plan,
// each in force from its validFrom. Immutable; safe for concurrent use.
type Catalog struct {
	versions map[string][]*Plan // by id, by validFrom ascending
	// entitlements is set when some plan version limits some meter.
	entitlements bool
	grants       bool
	grantMeters  map[string]bool
	sla          bool
	services     map[string]bool // named by some objective (Objective.Service)
	maxWithin    time.Duration   // the longest Objective.Within
}

// HasEntitlements reports whether some plan version sets an entitlement.
func (c *Catalog) HasEntitlements() bool { return c.entitlements }

// HasGrants reports whether some plan version limits a meter by grants
// (of: grants).
func (c *Catalog) HasGrants() bool { return c.grants }

// GrantsLimit reports whether some plan version limits meter by grants.
func (c *Catalog) GrantsLimit(meter string) bool { return c.grantMeters[meter] }

// ParseCatalog reads and validates a plan file.
func ParseCatalog(data []byte) (*Catalog, error) {
	var probe struct {
		Plans []yaml.Node `yaml:"plans"`
	}
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("plans: %w", err)
	}
	var docs [][]byte
	if len(probe.Plans) == 0 {
		docs = [][]byte{data}
	} else {
		for _, n := range probe.Plans {
			b, err := yaml.Marshal(&n)
			if err != nil {
				return nil, fmt.Errorf("plans: %w", err)
			}
			docs = append(docs, b)
		}
	}
	c := &Catalog{versions: make(map[string][]*Plan)}
	for i, doc := range docs {
		p, err := Parse(doc)
		if err != nil {
			return nil, fmt.Errorf("plans[%d]: %w", i, err)
		}
		c.versions[p.ID] = append(c.versions[p.ID], p)
		c.sla = c.sla || len(p.SLA) > 0
		for _, o := range p.SLA {
			c.maxWithin = max(c.maxWithin, o.Within.Duration)
			if o.Service != "" {
				if c.services == nil {
					c.services = map[string]bool{}
				}
				c.services[o.Service] = true
			}
		}
		for name, price := range p.Meters {
			c.entitlements = c.entitlements || price.Entitlement != nil
			if price.Entitlement != nil && price.Entitlement.Of.Grants() {
				c.grants = true
				if c.grantMeters == nil {
					c.grantMeters = map[string]bool{}
				}
				c.grantMeters[name] = true
			}
		}
	}
	for id, vs := range c.versions {
		sort.Slice(vs, func(i, j int) bool { return vs[i].ValidFrom.Before(vs[j].ValidFrom) })
		for i := 1; i < len(vs); i++ {
			if vs[i].ValidFrom.Equal(vs[i-1].ValidFrom) {
				return nil, fmt.Errorf("plan %s: two versions valid from %s; give each version its own validFrom", id, vs[i].ValidFrom.Format(time.RFC3339))
			}
			if vs[i].Currency != vs[0].Currency {
				return nil, fmt.Errorf("plan %s: version from %s changes the currency from %s to %s; make it a new plan", id, vs[i].ValidFrom.Format(time.RFC3339), vs[0].Currency, vs[i].Currency)
			}
		}
	}
	return c, nil
}

// Plan returns the version of plan id in force at t: the latest validFrom
// not after t.
func (c *Catalog) Plan(id string, t time.Time) (*Plan, error) {
	vs := c.versions[id]
	if len(vs) == 0 {
		return nil, fmt.Errorf("no plan %q", id)
	}
	i := sort.Search(len(vs), func(i int) bool { return vs[i].ValidFrom.After(t) })
	if i == 0 {
		return nil, fmt.Errorf("plan %s has no version in force at %s (the first is valid from %s)", id, t.Format(time.RFC3339), vs[0].ValidFrom.Format(time.RFC3339))
	}
	return vs[i-1], nil
}

// IDs returns the plan ids, sorted.
func (c *Catalog) IDs() []string {
	ids := make([]string, 0, len(c.versions))
	for id := range c.versions {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Versions returns every version of every plan.
func (c *Catalog) Versions() []*Plan {
	var out []*Plan
	for _, id := range c.IDs() {
		out = append(out, c.versions[id]...)
	}
	return out
}

// Subscription assigns a customer to a plan from Start until End (zero:
// open-ended).
type Subscription struct {
	Customer string    `yaml:"customer" json:"customer"`
	Plan     string    `yaml:"plan" json:"plan"`
	Start    time.Time `yaml:"start" json:"start"`
	End      time.Time `yaml:"end" json:"end"`
}

// Subscriptions finds the plan of a customer at a time. Immutable.
type Subscriptions struct {
	byCustomer map[string][]Change // by At ascending
}

// Change is a point in a customer's subscription history: from At on, the
// customer is on Plan ("" for no plan: cancelled). Subscriptions from the
// configuration become changes (start: the plan; end: ""), and subscription
// events add changes on top of them.
type Change struct {
	At   time.Time
	Plan string
}

// NewSubscriptions validates subs against the catalog: known plans, start
// before end, no overlapping subscriptions of one customer.
func NewSubscriptions(subs []Subscription, catalog *Catalog) (*Subscriptions, error) {
	byCustomer := make(map[string][]Subscription)
	for i, sub := range subs {
		at := fmt.Sprintf("subscriptions[%d] (customer %s)", i, sub.Customer)
		switch {
		case sub.Customer == "":
			return nil, fmt.Errorf("subscriptions[%d].customer: empty", i)
		case catalog.versions[sub.Plan] == nil:
			return nil, fmt.Errorf("%s.plan: no plan %q; plans are %v", at, sub.Plan, catalog.IDs())
		case sub.Start.IsZero():
			return nil, fmt.Errorf("%s.start: missing", at)
		case !sub.End.IsZero() && !sub.End.After(sub.Start):
			return nil, fmt.Errorf("%s.end: %s is not after start %s", at, sub.End.Format(time.RFC3339), sub.Start.Format(time.RFC3339))
		}
		byCustomer[sub.Customer] = append(byCustomer[sub.Customer], sub)
	}
	s := &Subscriptions{byCustomer: make(map[string][]Change)}
	for customer, list := range byCustomer {
		sort.Slice(list, func(i, j int) bool { return list[i].Start.Before(list[j].Start) })
		for i := 1; i < len(list); i++ {
			if prev := list[i-1]; prev.End.IsZero() || prev.End.After(list[i].Start) {
				return nil, fmt.Errorf("subscriptions of customer %s overlap: %s from %s and %s from %s; end the first before the second starts",
					customer, prev.Plan, prev.Start.Format(time.RFC3339), list[i].Plan, list[i].Start.Format(time.RFC3339))
			}
		}
		var changes []Change
		for _, sub := range list {
			if n := len(changes); n > 0 && changes[n-1].At.Equal(sub.Start) {
				changes = changes[:n-1] // an end meeting the next start
			}
			changes = append(changes, Change{At: sub.Start, Plan: sub.Plan})
			if !sub.End.IsZero() {
				changes = append(changes, Change{At: sub.End})
			}
		}
		s.byCustomer[customer] = changes
	}
	return s, nil
}

// Customers returns the customers with configured subscriptions, sorted.
func (s *Subscriptions) Customers() []string {
	out := make([]string, 0, len(s.byCustomer))
	for c := range s.byCustomer {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// Timeline is one customer's subscription history, by At ascending.
type Timeline []Change

// Timeline returns customer's configured history with the changes of its
// subscription events applied on top (in order; at equal times the event
// wins).
func (s *Subscriptions) Timeline(customer string, events []Change) Timeline {
	configured := s.byCustomer[customer]
	if len(events) == 0 {
		return configured
	}
	out := make(Timeline, 0, len(configured)+len(events))
	out = append(out, configured...)
	out = append(out, events...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// Lookup returns the plan id of customer's configured subscription active at t.
func (s *Subscriptions) Lookup(customer string, t time.Time) (string, bool) {
	return s.Timeline(customer, nil).Lookup(t)
}

// Segments is Timeline.Segments of customer's configured subscriptions.
func (s *Subscriptions) Segments(customer, defaultPlan string, start, end time.Time) []Segment {
	return s.Timeline(customer, nil).Segments(defaultPlan, start, end)
}

// Lookup returns the plan in force at t: the last change not after it.
func (tl Timeline) Lookup(t time.Time) (string, bool) {
	i := sort.Search(len(tl), func(i int) bool { return tl[i].At.After(t) })
	if i == 0 || tl[i-1].Plan == "" {
		return "", false
	}
	return tl[i-1].Plan, true
}

// Segment is a stretch of time a customer was on one plan.
type Segment struct {
	Plan       string
	Start, End time.Time
}

// Segments returns the stretches of [start, end) on one plan, in order;
// stretches without a plan get defaultPlan when it is set.
func (tl Timeline) Segments(defaultPlan string, start, end time.Time) []Segment {
	var out []Segment
	plan, _ := tl.Lookup(start)
	cursor := start
	flush := func(until time.Time) {
		p := plan
		if p == "" {
			p = defaultPlan
		}
		if p == "" || !until.After(cursor) {
			return
		}
		if n := len(out); n > 0 && out[n-1].Plan == p && out[n-1].End.Equal(cursor) {
			out[n-1].End = until
		} else {
			out = append(out, Segment{Plan: p, Start: cursor, End: until})
		}
	}
	for _, c := range tl {
		if !c.At.After(start) {
			continue
		}
		if !c.At.Before(end) {
			break
		}
		flush(c.At)
		plan, cursor = c.Plan, c.At
	}
	flush(end)
	return out
}

// parseYAMLStrict decodes YAML refusing unknown fields.
func parseYAMLStrict(data []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	return dec.Decode(v)
}
