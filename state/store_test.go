package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

func TestCommitAndReload(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	id := [16]byte{1, 2, 3}
	cp := &Checkpoint{
		Seq:        1,
		Partitions: []PartitionProgress{{Topic: "usage", Partition: 3, NextOffset: 42, MaxEventTimeNs: 7}},
		WindowPuts: []KV{{Key: []byte("k1"), Value: []byte("v1")}, {Key: []byte("k2"), Value: []byte("v2")}},
		DedupAdds:  []DedupEntry{{BucketNs: 60e9, IDHash: id, RoutingHash: 99}, {BucketNs: 120e9, IDHash: id, RoutingHash: 98}},
		Outbox:     map[Stream][][]byte{StreamRated: {[]byte("r0"), []byte("r1"), []byte("r2")}, StreamDeadLetter: {[]byte("x0")}},
	}
	if err := s.Commit(cp); err != nil {
		t.Fatal(err)
	}
	cp2 := &Checkpoint{
		Seq:                 2,
		WindowDeletes:       [][]byte{[]byte("k1")},
		DedupExpireBeforeNs: 120e9,
		Outbox:              map[Stream][][]byte{StreamRated: {[]byte("r3")}},
		SinkProgress:        map[string]OutboxPos{"ch": {Seq: 1, Index: 2}},
		OutboxTrim:          map[Stream]OutboxPos{StreamRated: {Seq: 1, Index: 2}},
	}
	if err := s.Commit(cp2); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if seq, err := s.LastSeq(); err != nil || seq != 2 {
		t.Errorf("LastSeq = %d, %v; want 2", seq, err)
	}
	parts, err := s.Partitions()
	if err != nil || len(parts) != 1 || parts[0] != cp.Partitions[0] {
		t.Errorf("Partitions = %+v, %v; want %+v", parts, err, cp.Partitions)
	}
	var windows []string
	if err := s.Windows(func(k, v []byte) error { windows = append(windows, string(k)+"="+string(v)); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(windows) != 1 || windows[0] != "k2=v2" {
		t.Errorf("windows %v, want [k2=v2]", windows)
	}
	var dedup []DedupEntry
	if err := s.Dedup(func(e DedupEntry) error { dedup = append(dedup, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(dedup) != 1 || dedup[0].BucketNs != 120e9 || dedup[0].RoutingHash != 98 || dedup[0].IDHash != id {
		t.Errorf("dedup %+v, want only the 120s bucket", dedup)
	}
	pos, err := s.SinkProgress("ch")
	if err != nil || pos != (OutboxPos{Seq: 1, Index: 2}) {
		t.Errorf("SinkProgress = %+v, %v", pos, err)
	}
	var got []string
	err = s.Outbox(StreamRated, OutboxPos{}, 2, 10, func(p OutboxPos, v []byte) error {
		got = append(got, string(v))
		return nil
	})
	if err != nil || len(got) != 2 || got[0] != "r2" || got[1] != "r3" {
		t.Errorf("rated outbox after trim = %v, %v; want [r2 r3]", got, err)
	}
	got = nil
	_ = s.Outbox(StreamRated, OutboxPos{}, 1, 10, func(p OutboxPos, v []byte) error { got = append(got, string(v)); return nil })
	if len(got) != 1 {
		t.Errorf("outbox through seq 1 = %v, want [r2]", got)
	}
	got = nil
	_ = s.Outbox(StreamDeadLetter, OutboxPos{}, 2, 10, func(p OutboxPos, v []byte) error { got = append(got, string(v)); return nil })
	if len(got) != 1 || got[0] != "x0" {
		t.Errorf("dead-letter outbox = %v, want [x0]", got)
	}
}

func TestOpenRefusesForeignFolders(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrForeign) {
		t.Errorf("Open(folder with other files) = %v, want ErrForeign", err)
	}
}

// TestOpenAfterInterruptedCreation: a start killed while it created the
// folder (after taking its lock, or after Pebble created its files but
// before the Tally marker) leaves a folder that holds nothing; the next
// start takes it, instead of refusing it for ever as foreign.
func TestOpenAfterInterruptedCreation(t *testing.T) {
	lockOnly := t.TempDir()
	if err := os.WriteFile(filepath.Join(lockOnly, "LOCK"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	noMarker := t.TempDir()
	db, err := pebble.Open(noMarker, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, dir := range []string{lockOnly, noMarker} {
		s, err := Open(dir)
		if err != nil {
			t.Errorf("Open(%s) after an interrupted creation: %v", filepath.Base(dir), err)
			continue
		}
		s.Close()
		if s, err = Open(dir); err != nil {
			t.Errorf("Open(%s) again: %v", filepath.Base(dir), err)
		} else {
			s.Close()
		}
	}
}

// TestOpenAfterCreationFailsAtEveryWrite: a start that dies at any write
// of a fresh folder's creation (seen in the crash harness: SIGKILL while
// Pebble wrote its first manifest, leaving its files and no database)
// leaves a folder the next start takes, empty, and uses. Each failure runs
// in a child process: Pebble ends the process on some of them.
func TestOpenAfterCreationFailsAtEveryWrite(t *testing.T) {
	if at := os.Getenv("TALLY_CREATE_FAIL_AT"); at != "" {
		n, _ := strconv.ParseInt(at, 10, 64)
		var writes atomic.Int64
		fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
			if op.Kind.ReadOrWrite() == errorfs.OpIsWrite && writes.Add(1) >= n {
				return errors.New("killed")
			}
			return nil
		}))
		if s, err := openFS(os.Getenv("TALLY_CREATE_DIR"), fs); err == nil {
			s.Close()
			fmt.Println("CREATED")
		}
		return
	}
	for n := 1; ; n++ {
		dir := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestOpenAfterCreationFailsAtEveryWrite$")
		cmd.Env = append(os.Environ(), fmt.Sprint("TALLY_CREATE_FAIL_AT=", n), "TALLY_CREATE_DIR="+dir)
		out, _ := cmd.CombinedOutput()
		if strings.Contains(string(out), "CREATED") {
			if n == 1 {
				t.Fatal("no write failed")
			}
			t.Logf("creation survives dying at each of its %d writes", n-1)
			return
		}
		s, err := Open(dir)
		if err != nil {
			t.Fatalf("died at write %d, then Open: %v", n, err)
		}
		if seq, err := s.LastSeq(); err != nil || seq != 0 {
			t.Errorf("died at write %d: reopened with checkpoint %d (%v), want a new folder", n, seq, err)
		}
		if err := s.Commit(&Checkpoint{Seq: 1, WindowPuts: []KV{{Key: []byte("a"), Value: []byte("1")}}}); err != nil {
			t.Errorf("died at write %d: the reopened folder does not take a checkpoint: %v", n, err)
		}
		s.Close()
	}
}

// TestOpenRefusesCorruptOrForeignState: a Pebble database that is not
// Tally's, and a Tally folder whose files were damaged, are refused at
// start with an error; neither is reset.
func TestOpenRefusesCorruptOrForeignState(t *testing.T) {
	foreign := t.TempDir()
	db, err := pebble.Open(foreign, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Set([]byte("k"), []byte("v"), pebble.Sync)
	db.Close()
	if _, err := Open(foreign); !errors.Is(err, ErrForeign) {
		t.Errorf("Open(another program's Pebble database) = %v, want ErrForeign", err)
	}

	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(&Checkpoint{Seq: 1, WindowPuts: []KV{{Key: []byte("a"), Value: []byte("1")}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	manifests, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*"))
	if len(manifests) == 0 {
		t.Fatal("no MANIFEST to damage")
	}
	for _, m := range manifests {
		if err := os.WriteFile(m, bytes.Repeat([]byte{0xde, 0xad}, 512), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if s, err := Open(dir); err == nil {
		s.Close()
		t.Fatal("a damaged state folder opened without error")
	} else {
		t.Logf("damaged folder: %v", err)
	}
	if after, _ := filepath.Glob(filepath.Join(dir, "MANIFEST-*")); len(after) != len(manifests) {
		t.Errorf("the damaged folder was changed (%d manifests, had %d): it must be left for inspection", len(after), len(manifests))
	}
}

// TestOpenRefusesFolderInUse: a second open of a folder in use says so, and
// does not advise starting from an empty folder as a way out.
func TestOpenRefusesFolderInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir)
	if err == nil || !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), "only after deleting the tenant's rows") {
		t.Fatalf("second open: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(dir)
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s.Close()
}
