package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tally-billing/tally/connectors/webhook"
	"github.com/tally-billing/tally/engine"
)

// TestProvisioningEndToEnd runs tally with the demo plan (SMS limited to
// 600 a month: notify at 50%, throttle at 80%, suspend at 100%), a
// provisioning topic and a webhook: a customer who sends 700 SMS is
// announced three times, to the topic (read back with kcat) and to the
// webhook (signatures checked with the receiver's own HMAC); one who sends
// 10 is not.
func TestProvisioningEndToEnd(t *testing.T) {
	brokers := startKafka(t, 2)
	at := time.Date(2026, 11, 5, 9, 0, 0, 0, time.UTC)
	var msgs [][2]string
	for i := range 700 {
		msgs = append(msgs, [2]string{"sub-000007", fmt.Sprintf(`{"id":"a%d","customer":"sub-000007","meter":"sms","time":%q,"value":1,"dims":{"destination":"uk"}}`,
			i, at.Add(time.Duration(i)*time.Second).Format(time.RFC3339))})
	}
	for i := range 10 {
		msgs = append(msgs, [2]string{"sub-000008", fmt.Sprintf(`{"id":"b%d","customer":"sub-000008","meter":"sms","time":%q,"value":1}`,
			i, at.Add(time.Duration(i)*time.Second).Format(time.RFC3339))})
	}
	produce(t, brokers, "usage", msgs)

	const secret = "s3cret"
	var mu sync.Mutex
	hooked := map[string]engine.ProvisioningAction{}
	var refused []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		var a engine.ProvisioningAction
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("X-Tally-Signature") != "sha256="+hex.EncodeToString(mac.Sum(nil)) || json.Unmarshal(body, &a) != nil ||
			a.ID != r.Header.Get("X-Tally-Idempotency-Key") {
			refused = append(refused, string(body))
			http.Error(w, "refused", http.StatusBadRequest)
			return
		}
		hooked[a.ID] = a
	}))
	defer srv.Close()

	cfg := testConfig(t, brokers, "", "")
	cfg.ClickHouse.Addr = ""
	cfg.Kafka.ProvisioningTopic = "provisioning"
	cfg.Webhooks = []webhook.Config{{URL: srv.URL + "/tally", Secret: secret}}
	r := start(t, cfg)
	defer func() { close(r.stop); <-r.done }()

	p := "sub-000007|sms|2026-11-01T00:00:00Z|limit|"
	want := []string{p + "100", p + "50", p + "80"}
	waitFor(t, 60*time.Second, "three actions at the webhook", func() string {
		mu.Lock()
		defer mu.Unlock()
		ids := slices.Sorted(func(yield func(string) bool) {
			for id := range hooked {
				if !yield(id) {
					return
				}
			}
		})
		if len(refused) > 0 || !slices.Equal(ids, want) {
			return fmt.Sprintf("webhook has %v (refused %v), want %v", ids, refused, want)
		}
		return ""
	})
	if a := hooked[p+"100"]; a.Action != "suspend" || a.Used.String() != "600" || a.Customer != "sub-000007" {
		t.Errorf("the 100%% action: %+v, want suspend at the 600th SMS", a)
	}
	var topic []string
	for _, m := range consume(t, brokers, "provisioning") {
		var a engine.ProvisioningAction
		if err := json.Unmarshal([]byte(m.value), &a); err != nil || m.key != a.Customer || !strings.Contains(m.headers, "tally-action-id="+a.ID) {
			t.Errorf("provisioning topic message %+v (%v): want keyed by customer, with the id in a header", m, err)
		}
		if !slices.Contains(topic, a.ID) {
			topic = append(topic, a.ID)
		}
	}
	slices.Sort(topic)
	if !slices.Equal(topic, want) {
		t.Errorf("provisioning topic holds %v, want %v", topic, want)
	}
}
