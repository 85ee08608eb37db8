package kafka

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/tally-billing/tally/state"
)

// TestChangelogFencesThePreviousOwner: a task's new owner opens its
// changelog; the old owner's next checkpoint can no longer commit, and the
// new owner restores exactly what was committed before.
func TestChangelogFencesThePreviousOwner(t *testing.T) {
	brokers := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	changelogs, err := NewChangelogs(ChangelogConfig{ClientConfig: ClientConfig{Brokers: brokers}, Topic: "changelog",
		TransactionalID: "tally-test", Spec: TopicSpec{ReplicationFactor: -1}}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer changelogs.Close()
	set := func(k, v string) state.Op { return state.Op{Kind: state.OpSet, Key: []byte(k), Value: []byte(v)} }

	old, err := changelogs.Open(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer old.(io.Closer).Close()
	if _, err := old.Append(ctx, []state.Op{set("a", "1"), {Kind: state.OpDeleteRange, Key: []byte("w/"), Value: []byte("w/5")}}); err != nil {
		t.Fatal(err)
	}
	owner, err := changelogs.Open(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.(io.Closer).Close()
	if _, err := old.Append(ctx, []state.Op{set("a", "zombie")}); err == nil {
		t.Error("the fenced owner committed a checkpoint")
	}
	pos, err := owner.Append(ctx, []state.Op{set("b", "2"), {Kind: state.OpDelete, Key: []byte("a")}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var next int64
	err = changelogs.ReadFrom(ctx, 1, 0, func(ops []state.Op, n int64) error {
		for _, op := range ops {
			got = append(got, string(op.Kind)+":"+string(op.Key)+"="+string(op.Value))
		}
		next = n
		return nil
	})
	want := []string{"s:a=1", "r:w/=w/5", "s:b=2", "d:a="}
	if err != nil || len(got) != len(want) {
		t.Fatalf("restore = %q, %v; want %q", got, err, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("restore = %q, want %q", got, want)
		}
	}
	if next != pos {
		t.Errorf("restore ends at %d, the last append at %d", next, pos)
	}
}
