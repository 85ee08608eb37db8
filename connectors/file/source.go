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

	"github.com/tally-billing/tally/engine"
)

// maxLineBytes bounds one line; longer ones are read whole and dead-lettered
// by the decoder as too large.
const maxLineBytes = 16 << 20

// Source serves the lines of a file. It implements engine.Source.
type Source struct {
	path  string
	lines [][]byte
}

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
	return s, nil
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
		out = append(out, engine.Record{Offset: r.next, Value: r.s.lines[r.next], HighWater: total})
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
