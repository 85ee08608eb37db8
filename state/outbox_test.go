package state

import (
	"bytes"
	"fmt"
	"testing"
)

// TestOutboxPacked: entries come back in position order across chunks and
// checkpoints, from any position, after entries of the unpacked layout; a
// trim in the middle of a chunk hides what is before it and deletes only
// the chunks wholly before it; the changelog carries a record per chunk.
func TestOutboxPacked(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Checkpoint 1 as versions before packing wrote it: a key per entry.
	for i := range 3 {
		if err := s.db.Set(outboxKey(StreamRated, 1, uint32(i)), fmt.Appendf(nil, "1.%d", i), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Checkpoint 2: 300 entries of 2 KB, three chunks, sealed.
	var entries [][]byte
	for i := range 300 {
		entries = append(entries, append(fmt.Appendf(nil, "2.%d ", i), bytes.Repeat([]byte("x"), 2000)...))
	}
	var ops []Op
	err = s.CommitPublished(&Checkpoint{Seq: 2, Outbox: map[Stream][][]byte{StreamRated: entries}}, func(o []Op) (int64, error) {
		ops = o
		return 0, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	chunks := 0
	for _, op := range ops {
		if bytes.HasPrefix(op.Key, prefixOutboxPacked) {
			chunks++
			if op.Value[0] != chunkS2 || len(op.Value) > 10_000 {
				t.Errorf("outbox chunk of %d bytes starting %x: not sealed", len(op.Value), op.Value[0])
			}
		}
	}
	if chunks != 3 {
		t.Errorf("%d outbox records in the changelog, want 3 chunks", chunks)
	}
	// Checkpoint 3 as versions before sealing wrote it: a plain chunk.
	if err := s.db.Set(packedOutboxKey(StreamRated, 3, 0), appendField(nil, []byte("3.0")), nil); err != nil {
		t.Fatal(err)
	}
	read := func(from OutboxPos, limit int) []string {
		var out []string
		err := s.Outbox(StreamRated, from, 3, limit, func(p OutboxPos, v []byte) error {
			name, _, _ := bytes.Cut(v, []byte(" "))
			if want := fmt.Sprintf("%d.%d", p.Seq, p.Index); string(name) != want {
				t.Fatalf("entry %q at position %s", name, want)
			}
			out = append(out, string(name))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := read(OutboxPos{}, 1000); len(got) != 304 || got[0] != "1.0" || got[3] != "2.0" || got[303] != "3.0" {
		t.Fatalf("whole outbox: %d entries, %v ...", len(got), got[:min(5, len(got))])
	}
	if got := read(OutboxPos{Seq: 2, Index: 150}, 2); fmt.Sprint(got) != "[2.150 2.151]" {
		t.Errorf("from 2.150, 2 entries: %v", got)
	}
	if got := read(OutboxPos{Seq: 1, Index: 2}, 3); fmt.Sprint(got) != "[1.2 2.0 2.1]" {
		t.Errorf("from 1.2, 3 entries: %v", got)
	}
	if err := s.Commit(&Checkpoint{Seq: 4, OutboxTrim: map[Stream]OutboxPos{StreamRated: {Seq: 2, Index: 150}}}); err != nil {
		t.Fatal(err)
	}
	if got := read(OutboxPos{}, 3); fmt.Sprint(got) != "[2.150 2.151 2.152]" {
		t.Errorf("after a trim at 2.150: %v", got)
	}
	var keys int
	_ = s.scan(prefixOutboxPacked, func(k, v []byte) error { keys++; return nil })
	_ = s.scan(prefixOutbox, func(k, v []byte) error { keys++; return nil })
	if keys != 3 {
		t.Errorf("%d outbox keys after the trim, want the chunk holding 2.150, the one after it and checkpoint 3's", keys)
	}
}

// TestOutboxTrimNeverGoesBack: a trim below an earlier one (a sink
// configured again with its old position) changes nothing.
func TestOutboxTrimNeverGoesBack(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var entries [][]byte
	for i := range 300 {
		entries = append(entries, append(fmt.Appendf(nil, "%d ", i), bytes.Repeat([]byte("x"), 2000)...))
	}
	if err := s.Commit(&Checkpoint{Seq: 1, Outbox: map[Stream][][]byte{StreamRated: entries}}); err != nil {
		t.Fatal(err)
	}
	for seq, at := range []uint32{250, 10} {
		if err := s.Commit(&Checkpoint{Seq: uint64(seq + 2), OutboxTrim: map[Stream]OutboxPos{StreamRated: {Seq: 1, Index: at}}}); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	first := OutboxPos{}
	err = s.Outbox(StreamRated, OutboxPos{Seq: 1, Index: 10}, 3, 1000, func(p OutboxPos, v []byte) error {
		if n == 0 {
			first = p
		}
		n++
		return nil
	})
	if err != nil || n != 50 || first != (OutboxPos{Seq: 1, Index: 250}) {
		t.Errorf("read from 1.10 after trims at 1.250 then 1.10: %d entries from %+v, %v; want 50 from 1.250", n, first, err)
	}
}
