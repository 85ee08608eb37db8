package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tally-billing/tally/rating"
)

const currencyPlans = `
plans:
  - id: eu
    currency: EUR
    rounding: {decimals: 2}
    meters: {sms: {model: per_unit, unitPrice: "0.10", flatFee: "10"}}
  - id: us
    currency: USD
    rounding: {decimals: 2}
    meters: {sms: {model: per_unit, unitPrice: "0.12", flatFee: "12"}}
`

// runCurrency feeds records and reports whether the engine survives a
// checkpoint past March.
func runCurrency(t *testing.T, subs []rating.Subscription, records ...string) error {
	h := pricedHarness(t, currencyPlans, "", subs, time.Minute, Meter{Name: "sms"})
	h.cfg.AllowedLateness = 0
	h.start()
	for _, r := range records {
		h.src.append(0, []byte(r))
	}
	h.src.append(0, []byte(`{"id":"b1","customer":"ann","meter":"sms","time":"2026-04-02T00:00:00Z","value":10}`))
	// A checkpoint request the engine never answers means it stopped.
	reply := make(chan uint64, 1)
	select {
	case h.engine.checkpointRequests <- checkpointRequest{offsets: h.src.offsets(), reply: reply}:
	case err := <-h.done:
		return err
	}
	select {
	case <-reply:
	case err := <-h.done:
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.engine.undeliveredCheckpoints() > 0 || h.engine.committedSeq.Load() == 0 {
		select {
		case err := <-h.done:
			return err
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("checkpoint not delivered")
		}
		time.Sleep(time.Millisecond)
	}
	h.cancel()
	<-h.done
	_ = context.Background()
	return nil
}

// TestCurrencyMixConfigured: configured subscriptions that switch currency
// inside a billing period are refused at start, naming the key; one that
// switches at a period's start is fine.
func TestCurrencyMixConfigured(t *testing.T) {
	catalog, err := rating.ParseCatalog([]byte(currencyPlans))
	if err != nil {
		t.Fatal(err)
	}
	registry, err := newCustomers(nil, "UTC", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		switchAt time.Time
		refused  bool
	}{{time.Date(2026, 3, 15, 0, 0, 0, 0, time.UTC), true}, {time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), false}} {
		subs, err := rating.NewSubscriptions([]rating.Subscription{
			{Customer: "ann", Plan: "eu", Start: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), End: c.switchAt},
			{Customer: "ann", Plan: "us", Start: c.switchAt},
		}, catalog)
		if err != nil {
			t.Fatal(err)
		}
		err = checkSubscriptionCurrencies(rating.NewPricing(catalog, subs, ""), registry)
		var ce *ConfigError
		if got := errors.As(err, &ce) && ce.Key == "subscriptions"; got != c.refused {
			t.Errorf("a switch at %s: %v, refused %v want %v", c.switchAt.Format(time.RFC3339), err, got, c.refused)
		}
	}
}

func TestCurrencyMixStartOfPeriodBeforeLaterChange(t *testing.T) {
	if err := runCurrency(t, nil,
		`{"type":"subscription.created","id":"s1","customer":"ann","plan":"eu","time":"2026-03-01T00:00:00Z"}`,
		`{"type":"subscription.plan_changed","id":"s2","customer":"ann","plan":"eu","time":"2026-03-20T00:00:00Z"}`,
		`{"type":"subscription.plan_changed","id":"s3","customer":"ann","plan":"us","time":"2026-03-01T00:00:00Z"}`,
	); err != nil {
		t.Errorf("engine stopped: %v", err)
	}
}

func TestCurrencyMixCancelResubscribe(t *testing.T) {
	if err := runCurrency(t, nil,
		`{"type":"subscription.created","id":"s1","customer":"ann","plan":"eu","time":"2026-03-01T00:00:00Z"}`,
		`{"type":"subscription.cancelled","id":"s2","customer":"ann","time":"2026-03-10T00:00:00Z"}`,
		`{"type":"subscription.created","id":"s3","customer":"ann","plan":"us","time":"2026-03-20T00:00:00Z"}`,
	); err != nil {
		t.Errorf("engine stopped: %v", err)
	}
}

// A currency change dated at the period's start (allowed) but arriving
// after windows of the period were emitted under the old plan: the period
// ends with rows in two currencies.
func TestCurrencyMixBackdatedToPeriodStart(t *testing.T) {
	h := pricedHarness(t, currencyPlans, "", nil, time.Hour, Meter{Name: "sms"})
	h.cfg.AllowedLateness = 0
	h.start()
	for _, r := range []string{
		`{"type":"subscription.created","id":"s1","customer":"ann","plan":"eu","time":"2026-02-01T00:00:00Z"}`,
		`{"id":"u1","customer":"ann","meter":"sms","time":"2026-03-02T00:00:00Z","value":10}`,
		`{"id":"u2","customer":"ann","meter":"sms","time":"2026-03-10T00:00:00Z","value":10}`,
	} {
		h.src.append(0, []byte(r))
	}
	h.checkpoint(false)
	h.src.append(0, []byte(`{"type":"subscription.plan_changed","id":"s2","customer":"ann","plan":"us","time":"2026-03-01T00:00:00Z"}`))
	h.src.append(0, []byte(`{"id":"u3","customer":"ann","meter":"sms","time":"2026-03-20T00:00:00Z","value":10}`))
	h.src.append(0, []byte(`{"id":"b1","customer":"bob","meter":"sms","time":"2026-04-02T00:00:00Z","value":10}`))
	_, dead := h.checkpoint(false)
	h.stop()
	var rows []RatedRow
	cur := map[string]bool{}
	for _, r := range h.final() {
		if r.Customer == "ann" && r.WindowStart.Month() == time.March {
			rows = append(rows, r)
			cur[r.Currency] = true
			t.Logf("%s %s %s %s %s", r.Meter, r.GroupKey, r.WindowStart.Format(time.RFC3339), r.Amount, r.Currency)
		}
	}
	t.Logf("dead letters %+v", dead)
	_, err := BuildStatement("ann", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), rows, nil)
	if len(cur) > 1 {
		t.Errorf("March charged in %v; statement: %v", cur, err)
	}
}
