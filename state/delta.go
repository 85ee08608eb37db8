package state

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The delta log holds the state of the windows in the engine's memory. A
// checkpoint writes the windows that changed since the previous one as a
// few large chunks (Checkpoint.DeltaChunks) instead of one key each: one
// Pebble key and one changelog record per ~DeltaChunkBytes rather than per
// window, which is most of what a checkpoint used to cost. Now and then a
// checkpoint writes a base instead (Checkpoint.DeltaBase): every window in
// memory, after which the older chunks are deleted (one range delete), so
// the log stays within a small multiple of the live state.
//
// A window's own key (prefixWindow, Checkpoint.WindowPuts) is written only
// when it leaves memory (it is merged there), so that a late record can
// read it back.
//
// An entry with an empty value is a tombstone: the window left memory
// (merged into its own key, or deleted), and older entries of it are void.
// A base needs none, since it replaces every older chunk.
//
// Recovery reads the chunks in order (the latest entry of a window wins),
// then the window keys of windows the log does not hold newer. Invariant (kept by the
// engine): a window's own key never holds a newer state than its latest
// entry in the log, since merging copies a durable state.

// DeltaChunkBytes is the size a delta chunk is cut at: small enough for one
// Kafka record of a changelog (brokers' default limit is 1 MB).
const DeltaChunkBytes = 256 << 10

// prefixDelta holds the delta log: chunk i of checkpoint seq at
// l/<seq><i>, both big-endian, so a scan reads them in order.
var prefixDelta = []byte("l/")

func deltaKey(seq uint64, i uint32) []byte {
	k := binary.BigEndian.AppendUint64(append(make([]byte, 0, len(prefixDelta)+12), prefixDelta...), seq)
	return binary.BigEndian.AppendUint32(k, i)
}

// AppendDeltaEntry appends one window (its key and value; none for a
// tombstone) to a delta chunk.
func AppendDeltaEntry(chunk, key, value []byte) []byte {
	return appendField(appendField(chunk, key), value)
}

var errDeltaCorrupt = errors.New("delta chunk is corrupt")

// OpenDeltaChunk returns the entries of a stored chunk, for
// ReadDeltaEntries: a sealed chunk's decompressed into a buffer of their
// own, a plain chunk's as they are.
func OpenDeltaChunk(chunk []byte) ([]byte, error) {
	entries, err := openChunk(chunk)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errDeltaCorrupt, err)
	}
	return entries, nil
}

// ReadDeltaEntries calls fn with every entry of an opened chunk, in order;
// the slices alias it.
func ReadDeltaEntries(chunk []byte, fn func(key, value []byte) error) error {
	for len(chunk) > 0 {
		key, rest, ok := nextField(chunk)
		if !ok {
			return errDeltaCorrupt
		}
		value, rest, ok := nextField(rest)
		if !ok {
			return errDeltaCorrupt
		}
		if err := fn(key, value); err != nil {
			return err
		}
		chunk = rest
	}
	return nil
}

// appendField appends f to b, its length first: the framing of delta and
// outbox chunks.
func appendField(b, f []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(len(f))), f...)
}

// nextField reads the field appendField wrote at the start of b and
// returns it and what follows; ok is false when b does not start with one.
func nextField(b []byte) (field, rest []byte, ok bool) {
	n, w := binary.Uvarint(b)
	if w <= 0 || n > uint64(len(b)-w) {
		return nil, nil, false
	}
	return b[w : w+int(n)], b[w+int(n):], true
}

// Deltas calls fn with every chunk of the delta log, oldest first, and the
// checkpoint that wrote it. The chunk is valid only during the call.
func (s *Store) Deltas(fn func(seq uint64, chunk []byte) error) error {
	return s.scan(prefixDelta, func(k, v []byte) error {
		if len(k) != 12 {
			return fmt.Errorf("state: delta key %x: %w", k, errDeltaCorrupt)
		}
		return fn(binary.BigEndian.Uint64(k), v)
	})
}

// writeDeltas adds cp's delta chunks to b; a base first deletes every older
// chunk.
func writeDeltas(b *recordingBatch, cp *Checkpoint) error {
	if cp.DeltaBase {
		if err := b.DeleteRange(prefixDelta, deltaKey(cp.Seq, 0), nil); err != nil {
			return fmt.Errorf("state: batch delta base: %w", err)
		}
	}
	for i, chunk := range cp.DeltaChunks {
		if err := b.Set(deltaKey(cp.Seq, uint32(i)), chunk, nil); err != nil {
			return fmt.Errorf("state: batch delta chunk: %w", err)
		}
	}
	return nil
}
