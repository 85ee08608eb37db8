package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/engine"
)

// receiver is a webhook endpoint as a user would write one: it checks the
// signature with its own HMAC, keeps each idempotency key once, and fails
// the first request of each action when flaky.
type receiver struct {
	secret string
	flaky  bool
	mu     sync.Mutex
	seen   map[string]engine.ProvisioningAction
	tries  map[string]int
	bad    []string
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	mac := hmac.New(sha256.New, []byte(r.secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	r.mu.Lock()
	defer r.mu.Unlock()
	if !hmac.Equal([]byte(req.Header.Get("X-Tally-Signature")), []byte(want)) {
		r.bad = append(r.bad, "signature "+req.Header.Get("X-Tally-Signature"))
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var a engine.ProvisioningAction
	if err := json.Unmarshal(body, &a); err != nil || a.ID != req.Header.Get("X-Tally-Idempotency-Key") || req.Header.Get("Content-Type") != "application/json" {
		r.bad = append(r.bad, "body "+string(body))
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	r.tries[a.ID]++
	if r.flaky && r.tries[a.ID] == 1 {
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	if _, ok := r.seen[a.ID]; !ok {
		r.seen[a.ID] = a
	}
	w.WriteHeader(http.StatusNoContent)
}

func actions(ids ...string) []engine.ProvisioningAction {
	var out []engine.ProvisioningAction
	for _, id := range ids {
		out = append(out, engine.ProvisioningAction{ID: id, Action: "suspend", Customer: strings.Split(id, "|")[0], Meter: "sms",
			Limit: decimal.NewFromInt(100), Used: decimal.NewFromInt(100)})
	}
	return out
}

// TestDeliversSignedActionsAtLeastOnce: every action arrives signed with
// the secret and its idempotency key; a request answered 5xx fails the
// write, and writing the batch again (as the engine does) delivers it,
// each action kept once by its key.
func TestDeliversSignedActionsAtLeastOnce(t *testing.T) {
	r := &receiver{secret: "s3cret", flaky: true, seen: map[string]engine.ProvisioningAction{}, tries: map[string]int{}}
	srv := httptest.NewServer(r)
	defer srv.Close()
	s, err := New(Config{URL: srv.URL + "/tally", Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	batch := actions("ann|sms|2026-11-01T00:00:00Z|limit|100", "bob|sms|2026-11-01T00:00:00Z|limit|50")
	ctx := context.Background()
	var attempts int
	for attempts = 1; attempts < 10; attempts++ {
		if err = s.WriteActions(ctx, batch); err == nil {
			break
		}
		if !strings.Contains(err.Error(), "503") {
			t.Fatalf("a failed write says %v, want the status", err)
		}
	}
	if err != nil || len(r.seen) != 2 || len(r.bad) > 0 {
		t.Fatalf("after %d attempts: %v; received %v, refused %v", attempts, err, r.seen, r.bad)
	}
	if r.seen[batch[0].ID].Customer != "ann" || !r.seen[batch[0].ID].Used.Equal(decimal.NewFromInt(100)) {
		t.Errorf("received %+v", r.seen[batch[0].ID])
	}
	// A receiver with another secret refuses every request.
	other, _ := New(Config{URL: srv.URL, Secret: "guess"})
	if err := other.WriteActions(ctx, batch[:1]); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("a request signed with another secret: %v, want 401", err)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{URL: "ftp://x", Secret: "s"}, `webhooks[2].url: "ftp://x" is not an http(s) URL`},
		{Config{URL: "https://", Secret: "s"}, `webhooks[2].url`},
		{Config{URL: "https://p.example.com/tally"}, "webhooks[2].secret: missing"},
		{Config{URL: "https://p.example.com/tally", Secret: "s", Timeout: -1}, "webhooks[2].timeout"},
	} {
		if err := c.cfg.Validate("webhooks[2]"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}
