package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// fakeQuerier records the request and answers from a fixed usage.
type fakeQuerier struct {
	got engine.UsageRequest
	err error
}

func (f *fakeQuerier) Usage(_ context.Context, req engine.UsageRequest) (engine.Usage, error) {
	f.got = req
	if f.err != nil {
		return engine.Usage{}, f.err
	}
	return engine.Usage{Customer: req.Customer, Periods: []engine.PeriodUsage{{Meter: "sms", Quantity: decimal.NewFromInt(3),
		Amount: decimal.RequireFromString("0.15"), Currency: "EUR"}}}, nil
}

func (f *fakeQuerier) Entitlements(_ context.Context, customer string) (engine.Entitlements, error) {
	f.got = engine.UsageRequest{Customer: customer}
	if f.err != nil {
		return engine.Entitlements{}, f.err
	}
	return engine.Entitlements{Customer: customer, Entitlements: []engine.EntitlementReport{{Meter: "sms"}}}, nil
}

func (f *fakeQuerier) CheckEntitlement(_ context.Context, customer, meter string, units decimal.Decimal) (engine.EntitlementCheck, error) {
	f.got = engine.UsageRequest{Customer: customer, Meter: meter}
	if f.err != nil {
		return engine.EntitlementCheck{}, f.err
	}
	return engine.EntitlementCheck{Customer: customer, Units: units, Allowed: true, More: units}, nil
}

func (f *fakeQuerier) SLA(_ context.Context, customer string, month time.Time) (engine.SLAReport, error) {
	f.got = engine.UsageRequest{Customer: customer, From: month}
	if f.err != nil {
		return engine.SLAReport{}, f.err
	}
	return engine.SLAReport{Customer: customer, PeriodStart: month, Objectives: []engine.ObjectiveReport{{Name: "uptime", State: "met"}}}, nil
}

func (f *fakeQuerier) Statement(_ context.Context, customer string, month time.Time) (engine.Statement, error) {
	f.got = engine.UsageRequest{Customer: customer, From: month}
	if f.err != nil {
		return engine.Statement{}, f.err
	}
	return engine.Statement{Customer: customer, PeriodStart: month, Currency: "EUR", Total: decimal.RequireFromString("12.5"),
		Lines: []engine.StatementLine{{Kind: "usage", Meter: "sms", Amount: decimal.RequireFromString("12.5"), Explanation: "125 sms"}}}, nil
}

func TestUsageAPIValidatesRequests(t *testing.T) {
	for _, tt := range []struct {
		url    string
		status int
		inBody string
		err    error
	}{
		{"/v1/usage", 400, "customer is required", nil},
		{"/v1/usage?customer=c&from=yesterday", 400, "RFC 3339", nil},
		{"/v1/usage?customer=c&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", 400, "must be before", nil},
		{"/v1/usage?customer=c&limit=5", 400, "unknown parameter", nil},
		{"/v1/usage?customer=c&meter=x", 400, "unknown meter", engine.ErrUnknownMeter},
		{"/v1/usage?customer=c", 503, "unavailable", engine.ErrNotRunning},
		{"/v1/usage?customer=c&meter=sms&from=2026-01-01T00:00:00Z", 200, `"amount":"0.15"`, nil},
		{"/v1/customers/c/summary", 200, `"customer":"c"`, nil},
		{"/v1/customers/c/entitlements", 200, `"meter":"sms"`, nil},
		{"/v1/customers/c/entitlements?meter=sms", 400, "takes no parameters", nil},
		{"/v1/customers/c/entitlements", 503, "unavailable", engine.ErrNotRunning},
		{"/v1/customers/c/entitlements/sms?units=12.5", 200, `"allowed":true,"more":"12.5"`, nil},
		{"/v1/customers/c/entitlements/sms", 400, `units=\"\" is not a number`, nil},
		{"/v1/customers/c/entitlements/sms?units=-1", 400, "is not a number of units >= 0", nil},
		{"/v1/customers/c/entitlements/sms?units=ten", 400, "is not a number of units >= 0", nil},
		{"/v1/customers/c/entitlements/sms?units=1&at=now", 400, `unknown parameter \"at\"`, nil},
		{"/v1/customers/c/entitlements/voice?units=1", 404, "no entitlement", engine.ErrNoEntitlement},
		{"/v1/customers/c/entitlements/fax?units=1", 400, "unknown meter", engine.ErrUnknownMeter},
		{"/v1/customers/c/sla", 200, `"name":"uptime"`, nil},
		{"/v1/customers/c/sla?period=2026-11", 200, `"period_start":"2026-11-01T00:00:00Z"`, nil},
		{"/v1/customers/c/sla?period=november", 400, "is not a month such as 2026-11", nil},
		{"/v1/customers/c/sla?month=2026-11", 400, `unknown parameter \"month\"`, nil},
		{"/v1/customers/c/sla", 404, "no SLA objectives", engine.ErrNoSLA},
		{"/v1/customers/c/statement?period=2026-11", 200, `"total":"12.5"`, nil},
		{"/v1/customers/c/statement?period=2026-11&format=html", 200, `id="total">12.5 EUR`, nil},
		{"/v1/customers/c/statement?format=pdf", 400, "neither json nor html", nil},
		{"/v1/customers/c/statement?period=11/2026", 400, "is not a month", nil},
		{"/v1/customers/c/statement", 404, "settled", engine.ErrPeriodSettled},
		{"/v1/usage?customer=c", 405, "", nil}, // POST below
	} {
		t.Run(tt.url, func(t *testing.T) {
			mux := http.NewServeMux()
			q := &fakeQuerier{err: tt.err}
			registerAPI(mux, q)
			method := "GET"
			if tt.status == 405 {
				method = "POST"
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(method, tt.url, nil))
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tt.status || !strings.Contains(string(body), tt.inBody) {
				t.Errorf("%s %s = %d %s; want %d with %q", method, tt.url, rec.Code, body, tt.status, tt.inBody)
			}
			if tt.status == 400 && tt.err == nil && q.got.Customer != "" {
				t.Errorf("a bad request reached the engine: %+v", q.got)
			}
		})
	}
}

// startRated runs Tally without ClickHouse (the rated topic only) on
// 3,000 generated records of seed, produced before it starts; it stops
// when the test ends.
func startRated(t *testing.T, seed uint64) (*running, *stream) {
	t.Helper()
	brokers := startKafka(t, 2)
	s := makeStream(seed, 3000, time.Date(2026, 11, 5, 0, 0, 0, 0, time.UTC))
	produce(t, brokers, "usage", s.msgs)
	cfg := testConfig(t, brokers, "", "")
	cfg.ClickHouse.Addr = ""
	cfg.Kafka.RatedTopic = "rated-usage"
	r := start(t, cfg)
	t.Cleanup(func() { close(r.stop); <-r.done })
	waitReady(t, r)
	return r, s
}

func TestUsageAPIServesLiveState(t *testing.T) {
	r, s := startRated(t, 9)

	// Pick a customer and compute its expected voice_seconds windows.
	var customer string
	for key := range s.expected {
		if strings.HasPrefix(key, "voice_seconds|") {
			customer = strings.Split(key, "|")[1]
			break
		}
	}
	url := "http://" + r.app.listener.Addr().String() + "/v1/usage?customer=" + customer + "&meter=voice_seconds"
	waitFor(t, 30*time.Second, "the API to show every window of "+customer, func() string {
		resp, err := http.Get(url)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		var u engine.Usage
		if err := json.NewDecoder(resp.Body).Decode(&u); err != nil {
			return err.Error()
		}
		got := make(map[string]total)
		for _, w := range u.Windows {
			got[strings.Join([]string{w.Meter, customer, w.GroupKey, itoa(w.WindowStart.Unix())}, "|")] = total{quantity: w.Quantity, count: int64(w.Count)}
		}
		want := make(map[string]total)
		for key, tot := range s.expected {
			if strings.HasPrefix(key, "voice_seconds|"+customer+"|") {
				want[key] = total{quantity: tot.quantity, count: tot.count}
			}
		}
		if d := diff(want, got); d != "" {
			return d
		}
		var sum decimal.Decimal
		for _, tot := range want {
			sum = sum.Add(tot.quantity)
		}
		if len(u.Periods) != 1 || !u.Periods[0].Quantity.Equal(sum) ||
			!u.Periods[0].Amount.Equal(sum.Mul(prices["voice_seconds"]).RoundBank(6)) {
			return "period to date " + toJSON(u.Periods) + ", want quantity " + sum.String()
		}
		return ""
	})

	// The demo plan limits sms to 600 a month (hard): the customer's
	// entitlement counts its sms so far, and the check allows exactly
	// what is left.
	var sms int64
	for key, tot := range s.expected {
		if strings.HasPrefix(key, "sms|"+customer+"|") {
			sms += tot.count
		}
	}
	base := "http://" + r.app.listener.Addr().String() + "/v1/customers/" + customer + "/entitlements"
	var ents engine.Entitlements
	getJSON(t, base, &ents)
	if len(ents.Entitlements) != 1 || ents.Entitlements[0].Meter != "sms" || !ents.Entitlements[0].Used.Equal(decimal.NewFromInt(sms)) ||
		!ents.Entitlements[0].Remaining.Equal(decimal.NewFromInt(600-sms)) {
		t.Fatalf("entitlements of %s: %s, want sms used %d of 600", customer, toJSON(ents), sms)
	}
	for units, allowed := range map[int64]bool{600 - sms: true, 601 - sms: false} {
		var c engine.EntitlementCheck
		getJSON(t, fmt.Sprintf("%s/sms?units=%d", base, units), &c)
		if c.Allowed != allowed {
			t.Errorf("check %d more sms after %d: %s, want allowed %v", units, sms, toJSON(c), allowed)
		}
	}
}

// getJSON decodes the 200 answer of url into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

func itoa(n int64) string { return decimal.NewFromInt(n).String() }

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
