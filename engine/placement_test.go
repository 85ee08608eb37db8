package engine

import (
	"strings"
	"testing"
	"time"
)

// TestChangedBillingSettingsRefusedAtStart: changing a customer's anchor
// day or time zone while the state holds its billing period is refused at
// start, naming the key; putting the setting back resumes exactly.
func TestChangedBillingSettingsRefusedAtStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
		key    string
	}{
		{name: "anchor day", key: "customers[id=ann].billingAnchorDay", change: func(c *Config) { c.Customers[0].BillingAnchorDay = 15 }},
		{name: "time zone", key: "customers[id=ann].billingAnchorDay", change: func(c *Config) { c.Customers[0].Timezone = "Asia/Tokyo" }},
		{name: "default anchor day", key: "billingAnchorDay and timezone", change: func(c *Config) { c.BillingAnchorDay = 10 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, 1)
			h.cfg.AllowedLateness = 0
			h.cfg.Customers = []Customer{{ID: "ann", Timezone: "Europe/Paris", BillingAnchorDay: 1}}
			meters, err := CompileMeters([]Meter{{Name: "sms", Aggregation: AggCount}}, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			h.meters = meters
			h.start()
			h.src.append(0, []byte(`{"id":"1","customer":"ann","meter":"sms","time":"2026-03-20T10:00:00Z"}`),
				[]byte(`{"id":"2","customer":"bob","meter":"sms","time":"2026-03-20T10:00:00Z"}`))
			h.checkpoint(false)
			h.cancel()
			<-h.done

			saved := h.cfg
			saved.Customers = append([]Customer(nil), h.cfg.Customers...)
			tc.change(&h.cfg)
			h.start()
			select {
			case err = <-h.done:
			case <-time.After(10 * time.Second):
				h.cancel()
				<-h.done
				t.Fatalf("start with a changed %s was not refused", tc.name)
			}
			if err == nil || !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("start with a changed %s: %v, want a refusal naming %s", tc.name, err, tc.key)
			}
			t.Log(err)

			h.cfg = saved
			h.start()
			h.src.append(0, []byte(`{"id":"3","customer":"ann","meter":"sms","time":"2026-03-20T10:00:30Z"}`),
				[]byte(`{"id":"4","customer":"ann","meter":"sms","time":"2026-03-20T10:05:00Z"}`))
			h.checkpoint(false)
			var ann int64
			for _, r := range h.final() {
				if r.Customer == "ann" && r.WindowStart.Equal(time.Date(2026, 3, 20, 10, 0, 0, 0, time.UTC)) {
					ann = r.Quantity.IntPart()
				}
			}
			if ann != 2 {
				t.Fatalf("after putting the setting back, ann's 10:00 window holds %d, want 2", ann)
			}
			h.cancel()
			<-h.done
		})
	}
}
