// Package webhook delivers provisioning actions to an HTTP endpoint: one
// POST of the action's JSON each, signed with HMAC-SHA256 so that the
// receiver can tell Tally's requests from anyone's, and carrying the
// action's idempotency key, since delivery is at least once (a crash, or a
// request whose answer was lost, sends an action again).
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/tally-billing/tally/engine"
)

// Headers of every request.
const (
	// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the
	// request body under the shared secret.
	SignatureHeader = "X-Tally-Signature"
	// IdempotencyHeader carries the action's id: a receiver that has seen
	// it ignores the request (and answers 2xx).
	IdempotencyHeader = "X-Tally-Idempotency-Key"
)

// Config configures one webhook.
type Config struct {
	URL    string `yaml:"url"`
	Secret string `yaml:"secret"`
	// Timeout bounds each request (default 10 s).
	Timeout time.Duration `yaml:"timeout"`
}

// Validate checks c; where names it in errors (e.g. "webhooks[0]").
func (c Config) Validate(where string) error {
	u, err := url.Parse(c.URL)
	switch {
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("%s.url: %q is not an http(s) URL such as https://provisioning.example.com/tally", where, c.URL)
	case c.Secret == "":
		return fmt.Errorf("%s.secret: missing; requests are signed with it (HMAC-SHA256) so that the receiver can check they come from Tally", where)
	case c.Timeout < 0:
		return fmt.Errorf("%s.timeout: %s is negative", where, c.Timeout)
	}
	return nil
}

// Sink implements engine.ActionSink.
type Sink struct {
	cfg    Config
	client *http.Client
}

// New returns a sink posting to cfg.URL.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate("webhook"); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Sink{cfg: cfg, client: &http.Client{Timeout: cfg.Timeout}}, nil
}

// Name implements engine.ActionSink; it keys the sink's progress, so it
// names the URL.
func (s *Sink) Name() string { return "webhook:" + s.cfg.URL }

// Sign returns the signature header value of body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// WriteActions posts each action in order and returns at the first that
// is not answered 2xx: the engine retries the batch (with backoff) until
// every action is taken, so a receiver must answer 2xx for an id it has
// already seen.
func (s *Sink) WriteActions(ctx context.Context, actions []engine.ProvisioningAction) error {
	for i := range actions {
		body, err := json.Marshal(&actions[i])
		if err != nil {
			return fmt.Errorf("webhook %s: encode action: %w", s.cfg.URL, err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("webhook %s: %w", s.cfg.URL, err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SignatureHeader, Sign(s.cfg.Secret, body))
		req.Header.Set(IdempotencyHeader, actions[i].ID)
		resp, err := s.client.Do(req)
		if err != nil {
			return fmt.Errorf("webhook %s: post action %s: %w", s.cfg.URL, actions[i].ID, err)
		}
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fmt.Errorf("webhook %s: action %s answered %s: %s", s.cfg.URL, actions[i].ID, resp.Status, bytes.TrimSpace(answer))
		}
	}
	return nil
}
