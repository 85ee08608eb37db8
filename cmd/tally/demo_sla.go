package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/shopspring/decimal"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tally-billing/tally/bench/gen"
)

// demoSLA generates the demo's service-performance events: a probe of a
// few random subscribers every tick (most answer in 80-200 ms; one in 50
// subscribers is degraded, 200-600 ms and more failures), and, at the
// first tick, an outage in progress since three hours before the demo
// started for one subscriber in 100 (3 h of a 30-day month is 99.58%
// available: a breach of the demo plan's 99.9%).
type demoSLA struct {
	subscribers int
	start       time.Time
	outagesSent bool
	seq         uint64
}

func newDemoSLA(subscribers int, start time.Time) *demoSLA {
	return &demoSLA{subscribers: subscribers, start: start}
}

const (
	demoProbesPerTick  = 50 // 2,500 probes a second at the 20 ms tick
	demoDegradedEvery  = 50
	demoOutageEvery    = 100
	demoOutageDuration = 3 * time.Hour
)

// append adds this tick's SLA events to msgs.
func (d *demoSLA) append(msgs []*kgo.Record, g *gen.Generator, now time.Time) []*kgo.Record {
	if !d.outagesSent {
		d.outagesSent = true
		began := d.start.Add(-demoOutageDuration).UTC().Format(time.RFC3339)
		for i := 3; i < d.subscribers; i += demoOutageEvery {
			customer := fmt.Sprintf("sub-%06d", i)
			msgs = append(msgs, &kgo.Record{Key: []byte(customer), Value: fmt.Appendf(nil,
				`{"type":"sla.outage","id":"demo-outage-%d","customer":%q,"outage":"inc-%d","time":%q}`, i, customer, i, began)})
		}
	}
	at := now.UTC().Format(time.RFC3339Nano)
	for range demoProbesPerTick {
		i := g.Intn(d.subscribers)
		latency, failPermille := 80+g.Intn(120), 5
		if i%demoDegradedEvery == 7 {
			latency, failPermille = 200+g.Intn(400), 50
		}
		d.seq++
		customer := fmt.Sprintf("sub-%06d", i)
		msgs = append(msgs, &kgo.Record{Key: []byte(customer), Value: fmt.Appendf(nil,
			`{"type":"sla.probe","id":"demo-probe-%d-%d","customer":%q,"time":%q,"ok":%t,"latency_ms":%d}`,
			d.start.UnixNano(), d.seq, customer, at, g.Intn(1000) >= failPermille, latency)})
	}
	return msgs
}

// slaStates counts the demo subscribers with a breached objective in the
// billing period in progress, and the credit they are owed so far.
func slaStates(ctx context.Context, q usageQuerier, subscribers int) string {
	var mu sync.Mutex
	breached := 0
	var credit decimal.Decimal
	currency := ""
	err := eachSubscriber(ctx, subscribers, func(ctx context.Context, customer string) error {
		r, err := q.SLA(ctx, customer, time.Time{})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		worst := false
		for _, o := range r.Objectives {
			worst = worst || o.State == "breached"
			credit = credit.Add(o.Credit)
		}
		if worst {
			breached++
		}
		currency = r.Currency
		return nil
	})
	if err != nil {
		return "-"
	}
	return fmt.Sprintf("%d breached, credit %s %s so far", breached, credit.StringFixed(2), currency)
}
