package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfig: no configuration file panics the loader; a refused one says
// which key or line is wrong.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("plan: p.yaml\nkafka:\n  brokers: [127.0.0.1:9092]\nwindow: 1m\n"))
	f.Add([]byte("meters:\n- {name: sms, aggregation: COUNT, window: HOUR}\ncustomers:\n- {id: c1, timezone: Europe/Paris, billingAnchorDay: 15}\n"))
	f.Add([]byte("subscriptions:\n- {customer: c1, plan: basic, start: 2026-01-01T00:00:00Z}\nreviseHorizon: 2h\nfinalizeAfter: 72h\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "tally.yaml")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := loadConfig("run", []string{"--config", path}, true)
		if err != nil && !strings.Contains(err.Error(), "config") {
			t.Fatalf("error without a key or file named: %v", err)
		}
	})
}
