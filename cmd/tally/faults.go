package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tally-billing/tally/engine"
)

// faultsEnv names the environment variable that arms crash injection, for
// the crash harness only: "checkpoint=0.05,clickhouse=0.1,kafka=0.1" kills
// the process with SIGKILL, with that probability, while a checkpoint is
// being committed to Pebble or while a batch is being written to the
// ClickHouse or rated Kafka sink. Unset in production.
const faultsEnv = "TALLY_CRASH_FAULTS"

// faults kills the process at injection points.
type faults struct {
	odds map[string]float64
}

// parseFaults reads faultsEnv; nil when unset.
func parseFaults(spec string) (*faults, error) {
	if spec == "" {
		return nil, nil
	}
	f := &faults{odds: make(map[string]float64)}
	for _, part := range strings.Split(spec, ",") {
		point, odds, ok := strings.Cut(strings.TrimSpace(part), "=")
		p, err := strconv.ParseFloat(odds, 64)
		if !ok || err != nil || p < 0 || p > 1 {
			return nil, fmt.Errorf("%s: %q is not point=probability (0..1)", faultsEnv, part)
		}
		switch point {
		case "checkpoint", "clickhouse", "kafka":
		default:
			return nil, fmt.Errorf("%s: unknown point %q; use checkpoint, clickhouse or kafka", faultsEnv, point)
		}
		f.odds[point] = p
	}
	return f, nil
}

// at may arm a kill at point: after a random delay of up to 3 ms, so that
// it lands inside the operation that follows (a Pebble sync, an insert, a
// produce) or just after it.
func (f *faults) at(point string) {
	if f == nil || rand.Float64() >= f.odds[point] {
		return
	}
	delay := time.Duration(rand.IntN(3000)) * time.Microsecond
	go func() {
		time.Sleep(delay)
		fmt.Fprintf(os.Stderr, "TALLY_FAULT kill at %s\n", point)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}()
}

// faultySink arms kills around a sink's writes.
type faultySink struct {
	engine.Sink
	faults *faults
	point  string
}

func (s faultySink) Write(ctx context.Context, rows []engine.RatedRow) error {
	s.faults.at(s.point)
	return s.Sink.Write(ctx, rows)
}

// BatchRows passes on the batch size the sink asks for (engine.BatchSizer);
// 0 when it asks for none.
func (s faultySink) BatchRows() int {
	if b, ok := s.Sink.(engine.BatchSizer); ok {
		return b.BatchRows()
	}
	return 0
}

// faultyActionSink arms kills around an action sink's writes.
type faultyActionSink struct {
	engine.ActionSink
	faults *faults
}

func (s faultyActionSink) WriteActions(ctx context.Context, actions []engine.ProvisioningAction) error {
	s.faults.at("provisioning")
	return s.ActionSink.WriteActions(ctx, actions)
}
