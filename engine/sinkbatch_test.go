package engine

import (
	"context"
	"strings"
	"testing"
)

type plainSink struct{}

func (plainSink) Name() string                            { return "plain" }
func (plainSink) Write(context.Context, []RatedRow) error { return nil }

type bigBatchSink struct{ plainSink }

func (bigBatchSink) BatchRows() int { return 50_000 }

// TestSinkBatchRows: sinkBatchRows, when set, bounds every sink's writes;
// unset, a sink that asks for a batch size gets it, the others the default.
func TestSinkBatchRows(t *testing.T) {
	for _, c := range []struct {
		configured int
		sink       Sink
		want       int
	}{
		{0, plainSink{}, defaultSinkBatchRows},
		{0, bigBatchSink{}, 50_000},
		{300, plainSink{}, 300},
		{300, bigBatchSink{}, 300},
	} {
		cfg := Config{SinkBatchRows: c.configured}
		if got := cfg.sinkBatchRows(c.sink); got != c.want {
			t.Errorf("sinkBatchRows %d, sink %T: %d rows a write, want %d", c.configured, c.sink, got, c.want)
		}
	}
	cfg := DefaultConfig()
	cfg.SinkBatchRows = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "sinkBatchRows") {
		t.Errorf("sinkBatchRows -1: %v, want an error naming the key", err)
	}
}
