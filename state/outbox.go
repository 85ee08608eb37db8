package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// The outbox holds each checkpoint's rows and dead letters until every
// sink of their stream delivered them. Entries are addressed by position
// (checkpoint, index) but stored packed, a chunk of up to DeltaChunkBytes
// per key (q/<stream><seq><index of its first entry>): one Pebble key and
// one changelog record per chunk instead of per row, and a trim deletes
// whole chunks. Versions before packing wrote one key per entry
// (o/<stream><seq><index>); those are read and trimmed as well, and come
// before every packed one.

var prefixOutboxPacked = []byte("q/")

// trimKey holds a stream's trim position: entries before it are gone even
// where their chunk is kept for entries after it.
func trimKey(stream Stream) []byte { return []byte{'c', '/', 't', byte(stream)} }

// encodePos is how positions are stored (sink progress, trims).
func encodePos(p OutboxPos) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, p.Seq), p.Index)
}

// getPos reads the position stored at key (zero if none); what names it in
// errors.
func (s *Store) getPos(key []byte, what string) (OutboxPos, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return OutboxPos{}, nil
	}
	if err != nil {
		return OutboxPos{}, fmt.Errorf("state: get %s: %w", what, err)
	}
	defer closer.Close()
	if len(v) != 12 {
		return OutboxPos{}, fmt.Errorf("state: %s holds %d bytes, want 12: state is corrupt", what, len(v))
	}
	return OutboxPos{Seq: binary.BigEndian.Uint64(v), Index: binary.BigEndian.Uint32(v[8:])}, nil
}

// outboxKeyPos returns the position in an outbox key (prefixOutbox's or
// prefixOutboxPacked's, of the same length): an entry's, or a chunk's
// first entry's.
func outboxKeyPos(k []byte, prefix []byte) (OutboxPos, error) {
	if len(k) != len(prefix)+1+8+4 {
		return OutboxPos{}, fmt.Errorf("state: malformed outbox key %q: state is corrupt", k)
	}
	return OutboxPos{
		Seq:   binary.BigEndian.Uint64(k[len(prefix)+1:]),
		Index: binary.BigEndian.Uint32(k[len(prefix)+9:]),
	}, nil
}

func packedOutboxKey(stream Stream, seq uint64, first uint32) []byte {
	k := append(append(make([]byte, 0, len(prefixOutboxPacked)+13), prefixOutboxPacked...), byte(stream))
	k = binary.BigEndian.AppendUint64(k, seq)
	return binary.BigEndian.AppendUint32(k, first)
}

// writeOutbox adds cp's outbox entries to b, packed in sealed chunks.
func writeOutbox(b *recordingBatch, cp *Checkpoint) error {
	var plain, scratch []byte
	for stream, entries := range cp.Outbox {
		for first := 0; first < len(entries); {
			size, n := 0, 0
			for first+n < len(entries) && (n == 0 || size+len(entries[first+n])+binary.MaxVarintLen32 <= DeltaChunkBytes) {
				size += len(entries[first+n]) + binary.MaxVarintLen32
				n++
			}
			plain = plain[:0]
			for _, e := range entries[first : first+n] {
				plain = appendField(plain, e)
			}
			var chunk []byte
			chunk, scratch = SealChunk(plain, scratch)
			if err := b.Set(packedOutboxKey(stream, cp.Seq, uint32(first)), chunk, nil); err != nil {
				return fmt.Errorf("state: batch outbox: %w", err)
			}
			first += n
		}
	}
	return nil
}

// trimOutbox deletes, per stream, every entry before the trim position
// that shares no chunk with an entry at or after it.
//
// Invariant: the trim position never goes back (a sink configured again
// with an old position must not see entries of a kept chunk reappear while
// those of deleted chunks stay gone).
func (s *Store) trimOutbox(b *recordingBatch, trim map[Stream]OutboxPos) error {
	for stream, pos := range trim {
		trimmed, err := s.trimmedTo(stream)
		if err != nil {
			return err
		}
		if !trimmed.Less(pos) {
			continue
		}
		if err := b.DeleteRange(outboxKey(stream, 0, 0), outboxKey(stream, pos.Seq, pos.Index), nil); err != nil {
			return fmt.Errorf("state: batch outbox trim: %w", err)
		}
		end, err := s.packedChunkAt(stream, pos)
		if err != nil {
			return err
		}
		if err := b.DeleteRange(packedOutboxKey(stream, 0, 0), end, nil); err != nil {
			return fmt.Errorf("state: batch outbox trim: %w", err)
		}
		if err := b.Set(trimKey(stream), encodePos(pos), nil); err != nil {
			return fmt.Errorf("state: batch outbox trim: %w", err)
		}
	}
	return nil
}

// packedChunkAt returns the key of the chunk that holds pos, or where such
// a chunk would start: every chunk before it holds entries before pos only.
func (s *Store) packedChunkAt(stream Stream, pos OutboxPos) ([]byte, error) {
	seqStart := packedOutboxKey(stream, pos.Seq, 0)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: seqStart, UpperBound: packedOutboxKey(stream, pos.Seq, pos.Index+1)})
	if err != nil {
		return nil, fmt.Errorf("state: outbox iterator: %w", err)
	}
	defer it.Close()
	if it.Last() {
		return bytes.Clone(it.Key()), nil
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("state: outbox iterator: %w", err)
	}
	return seqStart, nil
}

// Outbox calls fn for at most limit entries of stream at or after from and
// in checkpoints up to throughSeq, in position order, stopping at fn's
// first error. The value slice is valid only during the call.
func (s *Store) Outbox(stream Stream, from OutboxPos, throughSeq uint64, limit int, fn func(pos OutboxPos, value []byte) error) error {
	trimmed, err := s.trimmedTo(stream)
	if err != nil {
		return err
	}
	if from.Less(trimmed) {
		from = trimmed
	}
	n, err := s.legacyOutbox(stream, from, throughSeq, limit, fn)
	if err != nil || n >= limit {
		return err
	}
	start, err := s.packedChunkAt(stream, from)
	if err != nil {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: packedOutboxKey(stream, throughSeq+1, 0)})
	if err != nil {
		return fmt.Errorf("state: outbox iterator: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid() && n < limit; it.Next() {
		k := it.Key()
		pos, err := outboxKeyPos(k, prefixOutboxPacked)
		if err != nil {
			return err
		}
		chunk, err := openChunk(it.Value())
		if err != nil {
			return fmt.Errorf("state: outbox chunk %q: %w: state is corrupt", k, err)
		}
		for ; len(chunk) > 0 && n < limit; pos.Index++ {
			entry, rest, ok := nextField(chunk)
			if !ok {
				return fmt.Errorf("state: outbox chunk %q: state is corrupt", k)
			}
			chunk = rest
			if pos.Less(from) {
				continue
			}
			if err := fn(pos, entry); err != nil {
				return err
			}
			n++
		}
	}
	return it.Error()
}

// legacyOutbox is Outbox over the entries of versions before packing.
func (s *Store) legacyOutbox(stream Stream, from OutboxPos, throughSeq uint64, limit int, fn func(pos OutboxPos, value []byte) error) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{
		LowerBound: outboxKey(stream, from.Seq, from.Index),
		UpperBound: outboxKey(stream, throughSeq+1, 0),
	})
	if err != nil {
		return 0, fmt.Errorf("state: outbox iterator: %w", err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid() && n < limit; it.Next() {
		pos, err := outboxKeyPos(it.Key(), prefixOutbox)
		if err != nil {
			return n, err
		}
		if err := fn(pos, it.Value()); err != nil {
			return n, err
		}
		n++
	}
	return n, it.Error()
}

// trimmedTo returns stream's trim position (zero if never trimmed).
func (s *Store) trimmedTo(stream Stream) (OutboxPos, error) {
	return s.getPos(trimKey(stream), "outbox trim")
}
