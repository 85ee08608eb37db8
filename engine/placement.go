package engine

import (
	"fmt"
	"time"
)

// checkPlacement refuses to start when a billing-period aggregate in the
// state would be placed differently by the current configuration: a
// customer's billingAnchorDay or timezone (its own, or the defaults it
// falls back on), or a meter's window, changed while the state holds its
// billing. The state cannot move between periods (the period is part of
// every key it holds), so going on would file new usage of the period
// under another aggregate: allowances given twice, and windows revised with
// another period's totals at the same revision. Refusing at start, naming
// the key, is the rule; the engine never crash-loops on it later. p is
// key's placement (ok false: its meter is not configured).
func (e *Engine) checkPlacement(key windowName, settleNs int64, p placed, ok bool) error {
	if !ok {
		return nil // restoreWindow names a meter that is no longer configured
	}
	if p.startNs == key.startNs && p.settleNs == settleNs {
		return nil
	}
	cust := e.customers.get(key.customer)
	at := func(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339) }
	if p.startNs != key.startNs {
		keys := "billingAnchorDay and timezone"
		if e.customers.listed(key.customer) {
			keys = fmt.Sprintf("customers[id=%s].billingAnchorDay and .timezone", key.customer)
		}
		return configError(keys, "customer %s has billing state for its period starting %s (meter %s), which the configured anchor day %d "+
			"and time zone %s would place in the period %s..%s instead; Tally cannot move billing state between periods. "+
			"Put back the customer's previous billing anchor day and time zone: they cannot change while the customer has billing state",
			key.customer, at(key.startNs), key.meter, cust.anchorDay, cust.loc, at(p.startNs), at(p.endNs))
	}
	return configError(fmt.Sprintf("meters[name=%s].window", key.meter), "customer %s has billing state for its period starting %s "+
		"whose windows were cut differently (they settle at %s, the configured window of meter %s at %s); "+
		"put back the meter's previous window and align: they cannot change while billing state exists",
		key.customer, at(key.startNs), at(settleNs), key.meter, at(p.settleNs))
}

// placed is where the configuration puts the billing period of a stored
// window or period key: the period holding its start, and its settle end.
type placed struct {
	startNs, endNs, settleNs int64
}

// placement computes placed for key; ok is false when its meter is no
// longer configured.
func (e *Engine) placement(key windowName) (placed, bool) {
	m := e.decoder.meters.byName(key.meter)
	if m == nil {
		return placed{}, false
	}
	cust := e.customers.get(key.customer)
	startNs, endNs := billingPeriod(key.startNs, cust.loc, cust.anchorDay)
	return placed{startNs: startNs, endNs: endNs, settleNs: m.settleEnd(endNs, m.windowLoc(cust))}, true
}
