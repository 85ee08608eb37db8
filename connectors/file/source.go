// Package file reads usage from a JSON-lines file as one partition, for
// offline rating (`tally rate`) and backfills: line n is offset n.
package file

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/tally-billing/tally/engine"
)

// maxLineBytes bounds one line; longer ones are read whole and dead-lettered
// by the decoder as too large.
const maxLineBytes = 16 << 20

// Source serves the lines of a file. It implements engine.Source.
type Source struct {
	path  string
	lines [][]byte
	// stamps are the records' Kafka timestamps, from a sidecar file (see
	// Open); nil when there is none.
	stamps []time.Time
}

// TimesSuffix names a file's sidecar of record timestamps: path+TimesSuffix
// holds one RFC 3339 time a line, the Kafka timestamp of each record (each
// non-empty line) of path, in order. tally audit writes it with its export
// so that maxFutureSkew decides as the live run did.
const TimesSuffix = ".times"

// Open reads the whole file (offline use: files of a billing period fit).
func Open(path string) (*Source, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("file source: %w", err)
		}
		defer f.Close()
		r = f
	}
	s := &Source{path: path}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLineBytes)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		s.lines = append(s.lines, append([]byte(nil), sc.Bytes()...))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("file source: read %s: %w", path, err)
	}
	if path != "-" {
		if err := s.readStamps(path + TimesSuffix); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// readStamps reads the sidecar of record timestamps, if there is one.
func (s *Source) readStamps(path string) error {
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("file source: %w", err)
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		t, err := time.Parse(time.RFC3339Nano, line)
		if err != nil {
			return fmt.Errorf("file source: %s line %d: %q is not an RFC 3339 time", path, i+1, line)
		}
		s.stamps = append(s.stamps, t)
	}
	if len(s.stamps) != len(s.lines) {
		return fmt.Errorf("file source: %s has %d times for %d records; it must hold one per record", path, len(s.stamps), len(s.lines))
	}
	return nil
}

// Len returns the number of records.
func (s *Source) Len() int { return len(s.lines) }

// Partitions implements engine.Source: the file is one partition.
func (s *Source) Partitions(context.Context) ([]engine.PartitionID, error) {
	return []engine.PartitionID{{Topic: "file:" + s.path, Partition: 0}}, nil
}

// Open implements engine.Source.
func (s *Source) Open(_ context.Context, _ engine.PartitionID, offset int64) (engine.PartitionReader, error) {
	if offset == engine.OffsetEarliest {
		offset = 0
	}
	return &reader{s: s, next: offset}, nil
}

type reader struct {
	s    *Source
	next int64
}

// fetchRecords bounds one fetch.
const fetchRecords = 4096

// Fetch returns the next lines; at the end of the file it waits for ctx.
func (r *reader) Fetch(ctx context.Context) ([]engine.Record, error) {
	total := int64(len(r.s.lines))
	if r.next >= total {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	end := min(r.next+fetchRecords, total)
	out := make([]engine.Record, 0, end-r.next)
	for ; r.next < end; r.next++ {
		rec := engine.Record{Offset: r.next, Value: r.s.lines[r.next], HighWater: total}
		if r.s.stamps != nil {
			rec.Timestamp = r.s.stamps[r.next]
		}
		out = append(out, rec)
	}
	return out, nil
}

func (r *reader) Close() error { return nil }

// Customers returns the customer (or CloudEvents subject) of every line
// that names one, in file order, for summaries.
func (s *Source) Customers() []string {
	var out []string
	for _, line := range s.lines {
		var v struct {
			Customer string `json:"customer"`
			Subject  string `json:"subject"`
		}
		if json.Unmarshal(line, &v) != nil {
			continue
		}
		if v.Customer != "" {
			out = append(out, v.Customer)
		} else if v.Subject != "" {
			out = append(out, v.Subject)
		}
	}
	return out
}
