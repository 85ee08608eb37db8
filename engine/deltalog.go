package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/tally-billing/tally/state"
)

// deltaWriter encodes windows into delta log chunks (see state/delta.go) of
// about state.DeltaChunkBytes before sealing.
type deltaWriter struct {
	chunks  [][]byte // sealed
	bytes   int      // of the sealed chunks
	entries int
	// cur is the chunk being filled, plain; key, value and seal are
	// scratch. All four are reused from one barrier to the next.
	cur, key, value, seal []byte
}

// add appends the state of w, named name.
func (d *deltaWriter) add(name windowName, w *window) error {
	d.key = appendWindowKey(d.key[:0], name, w.periodEndNs)
	var err error
	if d.value, err = appendWindowValue(d.value[:0], w, name.groupKey); err != nil {
		return fmt.Errorf("engine: encode window %v: %w", name, err)
	}
	d.append(d.key, d.value)
	return nil
}

// tombstone records that the window of state key key left memory.
func (d *deltaWriter) tombstone(key []byte) {
	d.append(key, nil)
}

func (d *deltaWriter) append(key, value []byte) {
	n := len(key) + len(value) + 2*binary.MaxVarintLen32
	if len(d.cur) > 0 && len(d.cur)+n > state.DeltaChunkBytes {
		d.flush()
	}
	d.cur = state.AppendDeltaEntry(d.cur, key, value)
	d.entries++
}

// flush seals the current chunk.
func (d *deltaWriter) flush() {
	if len(d.cur) > 0 {
		var sealed []byte
		sealed, d.seal = state.SealChunk(d.cur, d.seal)
		d.chunks = append(d.chunks, sealed)
		d.bytes += len(sealed)
		d.cur = d.cur[:0]
	}
}

// reset readies d for a barrier: no chunks, its buffers kept from the
// last one unless one huge entry (a large unique count) grew them.
func (d *deltaWriter) reset() {
	*d = deltaWriter{cur: d.cur[:0], key: d.key, value: d.value, seal: d.seal}
	if cap(d.cur) > 2*state.DeltaChunkBytes {
		d.cur, d.seal = nil, nil
	}
}

// finish seals the last chunk and hands the chunks over, with their size
// in bytes.
func (d *deltaWriter) finish() ([][]byte, int) {
	d.flush()
	chunks := d.chunks
	d.chunks = nil
	return chunks, d.bytes
}

// readDeltaLog returns the latest logged state of every window in the
// store's delta log, by state key, and the log's size in bytes. An empty
// value is a tombstone: the window left memory (see shard.leave).
//
// The chunks are opened first and their entries counted, so that the map
// is made at its size: growing a map of millions of entries rehashes it
// again and again (a second of a 1M-window recovery). The count includes
// entries overwritten by later chunks, and every opened chunk is held until
// the map is filled: at most the log's size, about twice a base (see
// deltaLogSize), decompressed.
func (e *Engine) readDeltaLog() (map[string][]byte, int64, error) {
	var opened [][]byte
	var size int64
	entries := 0
	count := func(_, _ []byte) error { entries++; return nil }
	err := e.store.Deltas(func(_ uint64, chunk []byte) error {
		size += int64(len(chunk))
		if !state.ChunkSealed(chunk) {
			chunk = bytes.Clone(chunk) // the values alias it
		}
		chunk, err := state.OpenDeltaChunk(chunk)
		if err != nil {
			return err
		}
		opened = append(opened, chunk)
		return state.ReadDeltaEntries(chunk, count)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("engine: recover: read the delta log: %w", err)
	}
	latest := make(map[string][]byte, entries)
	for _, chunk := range opened {
		// Counted above: the chunk reads.
		_ = state.ReadDeltaEntries(chunk, func(k, v []byte) error {
			latest[string(k)] = v
			return nil
		})
	}
	return latest, size, nil
}

// minBaseBytes is the smallest delta log that is worth replacing by a base.
// Like every size of the log, it counts sealed bytes: about 5 MB of entries.
const minBaseBytes = 1 << 20

// deltaLogSize decides when a checkpoint writes a base: once the chunks
// written since the last base outgrow it (and minBaseBytes), so that the log
// stays within about twice the live state and a base costs at most one
// more write of what the deltas wrote. The writer owns it.
type deltaLogSize struct {
	base, sinceBase int64
	minBase         int64
}

// wrote records a durable checkpoint's chunks and reports whether the next
// checkpoint should be a base.
func (d *deltaLogSize) wrote(bytes int64, base bool) bool {
	if base {
		d.base, d.sinceBase = bytes, 0
	} else {
		d.sinceBase += bytes
	}
	return d.sinceBase >= max(d.base, d.minBase)
}
