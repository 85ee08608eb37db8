// Package jsonl writes rated rows as JSON lines to a local file, for the demo
// and for runs without ClickHouse. Delivery is at least once: after a crash a
// row may appear twice with the same identity and revision; readers keep the
// highest revision per identity.
package jsonl

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/tally-billing/tally/engine"
)

// Sink appends rows to a file. It implements engine.Sink.
type Sink struct {
	path string
	f    *os.File
}

// Open opens path for appending, creating it if needed.
func Open(path string) (*Sink, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("jsonl sink: %w", err)
	}
	return &Sink{path: path, f: f}, nil
}

// Name implements engine.Sink.
func (s *Sink) Name() string { return "jsonl:" + s.path }

// Write appends rows and syncs the file.
func (s *Sink) Write(_ context.Context, rows []engine.RatedRow) error {
	w := bufio.NewWriterSize(s.f, 1<<16)
	enc := json.NewEncoder(w)
	for i := range rows {
		if err := enc.Encode(&rows[i]); err != nil {
			return fmt.Errorf("jsonl sink: encode: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("jsonl sink: write %s: %w", s.path, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("jsonl sink: sync %s: %w", s.path, err)
	}
	return nil
}

// Close closes the file.
func (s *Sink) Close() error { return s.f.Close() }
