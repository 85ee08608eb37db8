// Package jsonl writes rated rows as JSON lines to a local file, for the demo
// and for runs without ClickHouse. Delivery is at least once: after a crash a
// row may appear twice with the same identity and revision; readers keep the
// highest revision per identity.
package jsonl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/tally-billing/tally/engine"
)

// Sink appends rows to a file. It implements engine.Sink.
type Sink struct {
	path string
	mu   sync.Mutex // engines of several tasks may share the sink
	f    *os.File
}

// Open opens path for appending, creating it if needed. A torn last line,
// left by a crash in the middle of a write, is cut off: that write was never
// acknowledged, so the engine delivers its rows again.
func Open(path string) (*Sink, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("jsonl sink: %w", err)
	}
	if err := cutTornLine(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("jsonl sink: repair %s: %w", path, err)
	}
	return &Sink{path: path, f: f}, nil
}

// cutTornLine truncates f after its last newline and leaves the offset at
// the end.
func cutTornLine(f *os.File) error {
	info, err := f.Stat()
	if err != nil {
		return err
	}
	size := info.Size()
	buf := make([]byte, 64<<10)
	end := size
	for end > 0 {
		n := int64(len(buf))
		if n > end {
			n = end
		}
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			end = end - n + int64(i) + 1
			break
		}
		end -= n
	}
	if end != size {
		if err := f.Truncate(end); err != nil {
			return err
		}
	}
	_, err = f.Seek(end, io.SeekStart)
	return err
}

// Name implements engine.Sink.
func (s *Sink) Name() string { return "jsonl:" + s.path }

// Write appends rows and syncs the file.
func (s *Sink) Write(_ context.Context, rows []engine.RatedRow) error {
	s.mu.Lock()
	defer s.mu.Unlock()
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
