package engine

import (
	"context"
	"errors"
	"time"
)

// Backoff is a retry schedule: waits that start at Min and double up to
// Max, for at most Attempts tries (0: until the context ends).
type Backoff struct {
	Min, Max time.Duration
	Attempts int
}

// Retry calls try until it succeeds, the attempts run out or ctx ends,
// waiting between tries; failed, if not nil, hears each failure that will
// be retried, with the wait before the next try. It returns nil once try
// succeeds, otherwise try's last error (ctx's if ctx ended before a try).
// An error try marks Permanent is returned at once, unwrapped.
func (b Backoff) Retry(ctx context.Context, try func(attempt int) error, failed func(attempt int, err error, wait time.Duration)) error {
	wait := b.Min
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := try(attempt)
		if err == nil {
			return nil
		}
		if p, ok := errors.AsType[permanentError](err); ok {
			return p.err
		}
		if (b.Attempts > 0 && attempt >= b.Attempts) || ctx.Err() != nil {
			return err
		}
		if failed != nil {
			failed(attempt, err, wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
		wait = min(2*wait, b.Max)
	}
}

// Permanent marks err as one that retrying cannot mend: Retry returns it at
// once.
func Permanent(err error) error { return permanentError{err} }

type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }
