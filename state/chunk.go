package state

import (
	"bytes"
	"fmt"

	"github.com/klauspost/compress/s2"
)

// Delta log and outbox chunks are stored sealed: chunkS2, then the chunk's
// fields compressed as one s2 block (github.com/klauspost/compress/s2, a
// faster snappy). Window keys and values repeat meters, customers'
// prefixes and period ends, rows their tenant, meter and breakdown: a
// delta chunk shrinks about 5x, and with it every copy a checkpoint makes
// (the Pebble batch, its WAL and memtable, the changelog record), for about
// 1.7 ms of compression a MB.
//
// A plain chunk (written before sealing) starts with its first field's
// length, never 0 (no window key, row or dead letter is empty), so the
// first byte tells the two apart and both are read.
const chunkS2 = 0

// SealChunk returns plain, a chunk of fields, sealed for storage in a
// buffer of its own; scratch is reused for the compression and returned
// for the next call.
func SealChunk(plain, scratch []byte) (sealed, scratchOut []byte) {
	if n := 1 + s2.MaxEncodedLen(len(plain)); cap(scratch) < n {
		scratch = make([]byte, n)
	}
	scratch = scratch[:cap(scratch)]
	scratch[0] = chunkS2
	block := s2.Encode(scratch[1:], plain)
	return bytes.Clone(scratch[:1+len(block)]), scratch
}

// ChunkSealed reports whether a stored chunk is sealed: its fields, once
// read, are in a buffer of their own rather than aliasing it.
func ChunkSealed(chunk []byte) bool { return len(chunk) > 0 && chunk[0] == chunkS2 }

// openChunk returns the fields of a stored chunk: a sealed one decompressed
// into a buffer of its own, a plain one as it is.
func openChunk(chunk []byte) ([]byte, error) {
	if !ChunkSealed(chunk) {
		return chunk, nil
	}
	plain, err := s2.Decode(nil, chunk[1:])
	if err != nil {
		return nil, fmt.Errorf("sealed chunk: %w", err)
	}
	return plain, nil
}
