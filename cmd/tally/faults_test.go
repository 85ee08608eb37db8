package main

import (
	"testing"

	"github.com/tally-billing/tally/connectors/clickhouse"
	"github.com/tally-billing/tally/connectors/kafka"
	"github.com/tally-billing/tally/engine"
)

// TestFaultySinkPassesBatchRows: the wrapper every sink goes through in
// tally run keeps what the sink asks for (engine.BatchSizer), and asks for
// nothing for a sink that does not.
func TestFaultySinkPassesBatchRows(t *testing.T) {
	var ch engine.BatchSizer = faultySink{Sink: &clickhouse.Sink{}}
	if got, want := ch.BatchRows(), (&clickhouse.Sink{}).BatchRows(); got != want || want == 0 {
		t.Errorf("ClickHouse sink through faultySink asks for %d rows a write, want %d", got, want)
	}
	if got := (faultySink{Sink: &kafka.RatedSink{}}).BatchRows(); got != 0 {
		t.Errorf("rated-topic sink through faultySink asks for %d rows a write, want 0 (the engine's default)", got)
	}
}
