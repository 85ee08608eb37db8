package state

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestDiskFullStopsThenRecovers: a checkpoint that cannot be written (the
// disk is full) stops the process with exit code 3 and a message saying
// what to do, instead of going on; reopened, the store holds the last
// durable checkpoint and nothing of the failed one.
func TestDiskFullStopsThenRecovers(t *testing.T) {
	if dir := os.Getenv("TALLY_DISKFULL_DIR"); dir != "" {
		diskFullChild(t, dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiskFullStopsThenRecovers$")
	cmd.Env = append(os.Environ(), "TALLY_DISKFULL_DIR="+dir)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Fatalf("child: %v, want exit code 3\n%s", err, out)
	}
	for _, want := range []string{"no space left on device", "cannot persist", "restart"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("reopen after the failure: %v", err)
	}
	defer s.Close()
	if seq, err := s.LastSeq(); err != nil || seq != 1 {
		t.Errorf("last durable checkpoint %d (%v), want 1: the failed one must not be there", seq, err)
	}
	var windows []string
	_ = s.Windows(func(k, _ []byte) error { windows = append(windows, string(k)); return nil })
	if len(windows) != 1 || windows[0] != "a" {
		t.Errorf("windows after recovery %q, want [a]", windows)
	}
}

func diskFullChild(t *testing.T, dir string) {
	var full atomic.Bool
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if full.Load() && op.Kind.ReadOrWrite() == errorfs.OpIsWrite {
			return syscall.ENOSPC
		}
		return nil
	}))
	s, err := openFS(filepath.Clean(dir), fs)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(&Checkpoint{Seq: 1, WindowPuts: []KV{{Key: []byte("a"), Value: []byte("1")}}}); err != nil {
		t.Fatal(err)
	}
	full.Store(true)
	err = s.Commit(&Checkpoint{Seq: 2, WindowPuts: []KV{{Key: []byte("b"), Value: []byte("2")}}})
	t.Fatalf("commit on a full disk returned (%v) instead of stopping the process", err)
}
