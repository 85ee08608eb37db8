package engine

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestApproxUniqueQueryDoesNotChangeState: reading a
// UNIQUE_COUNT_APPROX_HLL window's quantity (the live API, an emission)
// leaves the window's state, as checkpointed, byte for byte the same:
// queries read state, they never change it.
func TestApproxUniqueQueryDoesNotChangeState(t *testing.T) {
	meters, err := CompileMeters([]Meter{{Name: "cells", Aggregation: AggUniqueCountApprox, ValuePath: "dims.cell", EventTypes: []string{"data"}}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	w, m := &window{}, meters.byName("cells")
	for i := range 100 {
		w.add(&Event{Text: fmt.Sprintf("cell-%d", i), meter: m})
	}
	before, err := encodeWindowValue(w, "")
	if err != nil {
		t.Fatal(err)
	}
	if q := w.quantity(m); q.IntPart() < 95 || q.IntPart() > 105 {
		t.Fatalf("estimate %s of 100 distinct values", q)
	}
	after, err := encodeWindowValue(w, "")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Errorf("reading the estimate changed the encoded state:\n%x\n%x", before, after)
	}
}
