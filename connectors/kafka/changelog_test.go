package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tally-billing/tally/connectors/kafka/kafkatest"
	"github.com/tally-billing/tally/engine"
	"github.com/tally-billing/tally/state"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// testChangelogs are the changelogs of topic "changelog" on brokers,
// closed when the test ends.
func testChangelogs(t *testing.T, brokers []string) *Changelogs {
	t.Helper()
	changelogs, err := NewChangelogs(ChangelogConfig{ClientConfig: ClientConfig{Brokers: brokers}, Topic: "changelog",
		TransactionalID: "tally-test", Spec: TopicSpec{ReplicationFactor: -1}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { changelogs.Close() })
	return changelogs
}

// set is a change that sets k to v.
func set(k, v string) state.Op { return state.Op{Kind: state.OpSet, Key: []byte(k), Value: []byte(v)} }

// TestChangelogFencesThePreviousOwner: a task's new owner opens its
// changelog; the old owner's next checkpoint can no longer commit, and the
// new owner restores exactly what was committed before.
func TestChangelogFencesThePreviousOwner(t *testing.T) {
	brokers := cluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	changelogs := testChangelogs(t, brokers)

	old, err := changelogs.Open(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer old.(io.Closer).Close()
	if _, err := appendRetrying(ctx, t, old, []state.Op{set("a", "1"), {Kind: state.OpDeleteRange, Key: []byte("w/"), Value: []byte("w/5")}}); err != nil {
		t.Fatal(err)
	}
	owner, err := changelogs.Open(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.(io.Closer).Close()
	// The engine retries every error but a fence: the zombie's retries
	// never commit, soon say it was fenced, and do not take the
	// transactional id back from the new owner (checked by its append
	// below).
	for attempt := 1; ; attempt++ {
		_, err := old.Append(ctx, []state.Op{set("a", "zombie")})
		if err == nil {
			t.Fatal("the fenced owner committed a checkpoint")
		}
		if errors.Is(err, engine.ErrFenced) {
			break
		}
		t.Logf("attempt %d of the fenced owner: %v", attempt, err)
		if attempt == 3 {
			t.Fatalf("the fenced owner was not told it was fenced in %d attempts", attempt)
		}
	}
	pos, err := appendRetrying(ctx, t, owner, []state.Op{set("b", "2"), {Kind: state.OpDelete, Key: []byte("a")}})
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

// TestChangelogAppendAfterAnOutage: the broker goes away (connections
// refused, open ones cut) in the middle of a checkpoint's transaction:
// while producing, or while committing, in which case the commit lands but
// its answer is lost. The attempt fails without being fenced, and once the
// broker is back the next attempt with the same changes commits; the
// changelog restores them as once, whatever the failed attempt left.
func TestChangelogAppendAfterAnOutage(t *testing.T) {
	for _, step := range []kmsg.Key{kmsg.Produce, kmsg.EndTxn} {
		t.Run(kmsg.NameForKey(int16(step)), func(t *testing.T) {
			var outage kafkatest.Outage
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(outage.Listen))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			changelogs := testChangelogs(t, c.ListenAddrs())
			w, err := changelogs.Open(ctx, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer w.(io.Closer).Close()
			if _, err := appendRetrying(ctx, t, w, []state.Op{set("a", "1")}); err != nil {
				t.Fatal(err)
			}

			// The broker goes down as the step's request arrives; the
			// request itself is still handled (a commit lands).
			var fired atomic.Bool
			c.Control(func(req kmsg.Request) (kmsg.Response, error, bool) {
				c.KeepControl()
				if req.Key() == int16(step) && !fired.Swap(true) {
					outage.Down()
				}
				return nil, nil, false
			})
			cp := []state.Op{set("a", "2"), set("b", "1"), {Kind: state.OpDeleteRange, Key: []byte("w/"), Value: []byte("w/5")}}
			actx, acancel := context.WithTimeout(ctx, 3*time.Second)
			_, err = w.Append(actx, cp)
			acancel()
			if !fired.Load() {
				t.Fatal("the outage never started")
			}
			if err == nil || errors.Is(err, engine.ErrFenced) {
				t.Fatalf("append during the outage: err = %v, want a failure that is not a fence", err)
			}
			t.Logf("append during the outage: %v", err)
			if err := outage.Up(); err != nil {
				t.Fatal(err)
			}
			pos, err := appendRetrying(ctx, t, w, cp)
			if err != nil {
				t.Fatalf("append after the outage: %v", err)
			}
			if _, err := appendRetrying(ctx, t, w, []state.Op{set("c", "1")}); err != nil {
				t.Fatalf("the next checkpoint: %v", err)
			}

			// Restore: the last value of every key is the committed one.
			got := make(map[string]string)
			var end int64
			err = changelogs.ReadFrom(ctx, 0, 0, func(ops []state.Op, next int64) error {
				for _, op := range ops {
					t.Logf("restored %c %s=%s", op.Kind, op.Key, op.Value)
					switch op.Kind {
					case state.OpSet:
						got[string(op.Key)] = string(op.Value)
					case state.OpDelete:
						delete(got, string(op.Key))
					}
				}
				end = next
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got["a"] != "2" || got["b"] != "1" || got["c"] != "1" {
				t.Errorf("restored %v, want a=2 b=1 c=1", got)
			}
			// From the retried checkpoint's position on: only what came
			// after it.
			var tail []string
			err = changelogs.ReadFrom(ctx, 0, pos, func(ops []state.Op, _ int64) error {
				for _, op := range ops {
					tail = append(tail, string(op.Kind)+":"+string(op.Key)+"="+string(op.Value))
				}
				return nil
			})
			if err != nil || len(tail) != 1 || tail[0] != "s:c=1" || end <= pos {
				t.Errorf("from position %d the changelog holds %q (%v), ending at %d; want only s:c=1", pos, tail, err, end)
			}
		})
	}
}

// appendRetrying appends ops as the engine does: a failed append is
// retried until it commits or its error is final.
func appendRetrying(ctx context.Context, t *testing.T, w engine.Changelog, ops []state.Op) (int64, error) {
	var pos int64
	err := engine.Backoff{Min: 50 * time.Millisecond, Max: time.Second}.Retry(ctx, func(int) error {
		var err error
		pos, err = w.Append(ctx, ops)
		return err
	}, func(attempt int, err error, _ time.Duration) { t.Logf("append attempt %d: %v", attempt, err) })
	return pos, err
}

// TestChangelogErrorsFinalOrNot: the Kafka errors an abort and a new
// transaction mend are retried; the others stop the task.
func TestChangelogErrorsFinalOrNot(t *testing.T) {
	for _, c := range []struct {
		err   error
		final bool
	}{
		{kerr.OutOfOrderSequenceNumber, false},
		{kerr.UnknownServerError, false},
		{kerr.InvalidProducerEpoch, false},
		{kerr.NotLeaderForPartition, false}, // retriable
		{kerr.MessageTooLarge, true},
		{kerr.TopicAuthorizationFailed, true},
		{kerr.UnknownTopicID, true},
		{errors.New("connection refused"), false},
	} {
		if got := final(fmt.Errorf("produce: %w", c.err)); got != c.final {
			t.Errorf("final(%v) = %v, want %v", c.err, got, c.final)
		}
	}
}
