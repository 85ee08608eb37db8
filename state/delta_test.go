package state

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestDeltaLog: chunks come back in checkpoint order, a base removes every
// older chunk (and only those), tombstones read as empty values, and the
// changelog of a base carries a tombstone for each chunk it removes.
func TestDeltaLog(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	chunk := func(entries ...string) []byte {
		var c []byte
		for i := 0; i < len(entries); i += 2 {
			c = AppendDeltaEntry(c, []byte(entries[i]), []byte(entries[i+1]))
		}
		return c
	}
	commit := func(seq uint64, base bool, chunks ...[]byte) []Op {
		var ops []Op
		err := s.CommitPublished(&Checkpoint{Seq: seq, DeltaBase: base, DeltaChunks: chunks}, func(o []Op) (int64, error) {
			ops = o
			return int64(seq), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return ops
	}
	read := func() string {
		var out []string
		err := s.Deltas(func(seq uint64, c []byte) error {
			return readDeltaChunk(c, func(k, v []byte) error {
				out = append(out, fmt.Sprintf("%d:%s=%s", seq, k, v))
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(out)
	}
	commit(1, false, chunk("a", "1", "b", "1"), chunk("c", "1"))
	commit(2, false, chunk("a", "2", "b", ""))
	if got, want := read(), "[1:a=1 1:b=1 1:c=1 2:a=2 2:b=]"; got != want {
		t.Fatalf("log %s, want %s", got, want)
	}
	ops := commit(3, true, chunk("a", "2", "c", "1"))
	if got, want := read(), "[3:a=2 3:c=1]"; got != want {
		t.Fatalf("after a base: %s, want %s", got, want)
	}
	deleted := 0
	for _, op := range ops {
		if op.Kind == OpDelete && bytes.HasPrefix(op.Key, prefixDelta) {
			deleted++
		}
	}
	if deleted != 3 {
		t.Errorf("the base's changelog deletes %d chunks, want the 3 older ones", deleted)
	}
	commit(4, false, chunk("d", "1"))
	if got, want := read(), "[3:a=2 3:c=1 4:d=1]"; got != want {
		t.Fatalf("after a delta: %s, want %s", got, want)
	}
	for _, bad := range [][]byte{{5, 'a'}, {1, 'a', 9}, {0xff}} {
		if err := readDeltaChunk(bad, func(k, v []byte) error { return nil }); err == nil {
			t.Errorf("chunk %x read without error", bad)
		}
	}
}

// TestOpenUpgradesOlderFormats: a folder of any older layout opens, keeps
// its state and is marked with the current format, so that an older Tally
// refuses it.
func TestOpenUpgradesOlderFormats(t *testing.T) {
	for _, older := range olderFormats {
		dir := t.TempDir()
		s, err := Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(&Checkpoint{Seq: 1, WindowPuts: []KV{{Key: []byte("k"), Value: []byte("v")}}}); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Set(keyFormat, []byte(older), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		s.Close()
		if s, err = Open(dir); err != nil {
			t.Fatalf("%s folder refused: %v", older, err)
		}
		v, closer, err := s.db.Get(keyFormat)
		if err != nil {
			t.Fatal(err)
		}
		if string(v) != formatMarker {
			t.Errorf("%s: marker %q after open, want %q", older, v, formatMarker)
		}
		closer.Close()
		if w, ok, err := s.Window([]byte("k")); err != nil || !ok || string(w) != "v" {
			t.Errorf("%s: window k = %q %v %v after the upgrade", older, w, ok, err)
		}
		s.Close()
	}
}

// TestDeltaChunkSealing: a sealed chunk reads back entry for entry, much
// smaller; a plain chunk (written before sealing) still reads; a damaged
// sealed chunk is an error, not a panic or a wrong entry.
func TestDeltaChunkSealing(t *testing.T) {
	var plain []byte
	var want []string
	for i := range 2000 {
		key := fmt.Appendf(nil, "\x00\x00\x01\x9a\x00\x00\x00\x00wvoice_seconds\x00sub-%07d\x00destination=FR\x00%08d", i%300, i)
		value := fmt.Appendf(nil, "\x02\x80\x80%d\x00%d", i, i*7)
		if i%50 == 0 {
			value = nil // a tombstone
		}
		plain = AppendDeltaEntry(plain, key, value)
		want = append(want, fmt.Sprintf("%q=%q", key, value))
	}
	read := func(chunk []byte) ([]string, error) {
		var got []string
		err := readDeltaChunk(chunk, func(k, v []byte) error {
			got = append(got, fmt.Sprintf("%q=%q", k, v))
			return nil
		})
		return got, err
	}
	sealed, scratch := SealChunk(plain, nil)
	if len(sealed)*3 > len(plain) {
		t.Errorf("sealed %d bytes of %d: less than 3x smaller", len(sealed), len(plain))
	}
	if again, _ := SealChunk(plain, scratch); !bytes.Equal(again, sealed) {
		t.Error("sealing with a reused scratch gave other bytes")
	}
	for name, chunk := range map[string][]byte{"sealed": sealed, "plain": plain} {
		got, err := read(chunk)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s chunk: %d entries (%v), want %d the same", name, len(got), err, len(want))
		}
	}
	for _, damaged := range [][]byte{sealed[:len(sealed)/2], append(bytes.Clone(sealed[:1]), 0xff, 0xff, 0xff), {chunkS2}} {
		if got, err := read(damaged); err == nil && len(got) > 0 {
			t.Errorf("a damaged sealed chunk of %d bytes read as %d entries without error", len(damaged), len(got))
		}
	}
}

// readDeltaChunk calls fn with every entry of a stored chunk, sealed or
// plain, in order, as recovery reads them.
func readDeltaChunk(chunk []byte, fn func(key, value []byte) error) error {
	entries, err := OpenDeltaChunk(chunk)
	if err != nil {
		return err
	}
	return ReadDeltaEntries(entries, fn)
}
