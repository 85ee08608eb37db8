package engine

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestBackoffRetry(t *testing.T) {
	b := Backoff{Min: time.Millisecond, Max: 4 * time.Millisecond, Attempts: 5}
	var waits []time.Duration
	failed := func(_ int, _ error, wait time.Duration) { waits = append(waits, wait) }

	// Succeeds on the fourth try, after waits that double up to Max.
	err := b.Retry(context.Background(), func(attempt int) error {
		if attempt < 4 {
			return fmt.Errorf("try %d", attempt)
		}
		return nil
	}, failed)
	if err != nil || fmt.Sprint(waits) != "[1ms 2ms 4ms]" {
		t.Errorf("Retry = %v after waits %v, want nil after [1ms 2ms 4ms]", err, waits)
	}

	// Out of attempts: the last error, and no wait after the last try.
	waits, tries := nil, 0
	err = b.Retry(context.Background(), func(attempt int) error { tries++; return fmt.Errorf("try %d", attempt) }, failed)
	if err == nil || err.Error() != "try 5" || tries != 5 || len(waits) != 4 {
		t.Errorf("Retry = %v after %d tries and %d waits, want try 5 after 5 and 4", err, tries, len(waits))
	}

	// Without a bound it goes on until the context ends, then returns the
	// last error of try, promptly, even in the middle of a wait.
	ctx, cancel := context.WithCancel(context.Background())
	long := Backoff{Min: time.Hour, Max: time.Hour}
	done := make(chan error, 1)
	go func() {
		done <- long.Retry(ctx, func(int) error { return errors.New("down") }, nil)
	}()
	time.Sleep(10 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err == nil || err.Error() != "down" {
			t.Errorf("Retry after cancel = %v, want down", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Retry did not return when its context ended")
	}
	if err := long.Retry(ctx, func(int) error { return nil }, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Retry on an ended context = %v, want context.Canceled without a try", err)
	}

	// A permanent error ends the tries at once, unwrapped.
	tries = 0
	final := errors.New("refused for good")
	err = b.Retry(context.Background(), func(int) error { tries++; return fmt.Errorf("step: %w", Permanent(final)) }, nil)
	if tries != 1 || !errors.Is(err, final) || err.Error() != "refused for good" {
		t.Errorf("Retry of a permanent error = %q after %d tries, want refused for good after 1", err, tries)
	}
}
