package engine

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/bench/oracle"
	"github.com/tally-billing/tally/rating"
)

// TestRatingOracle holds the engine to bench/oracle, an independent
// recomputation that shares nothing with package rating or with the
// engine's windows, periods and charging. Each seed draws random plans
// (per unit with per-N prices, package, graduated and volume tiers with
// tier fees, free allowances, commitments, flat fees, per-event bands or
// destinations with connect fees and per-event bounds, two versions, every
// rounding mode), customers in five zones with anchor days 1, 10, 15 and
// 28, 5m, HOUR, DAY and MONTH windows (UTC or customer-aligned), configured
// subscriptions and subscription events with mid-period changes and a
// cancellation, and producer retries; feeds them through the real engine
// with random checkpoints, crashes and graceful restarts; closes every
// window (AdvanceWatermark); and checks windows, money per period and fee
// rows (see oracle.World.Check).
//
// Seeds: TALLY_ORACLE_SEED replays one; TALLY_ORACLE_RUNS sets how many
// random ones run (default 4).
func TestRatingOracle(t *testing.T) {
	runs := 4
	if v, err := strconv.Atoi(os.Getenv("TALLY_ORACLE_RUNS")); err == nil && v > 0 {
		runs = v
	}
	var seeds []uint64
	if v := os.Getenv("TALLY_ORACLE_SEED"); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("TALLY_ORACLE_SEED=%q: %v", v, err)
		}
		seeds = []uint64{seed}
	} else {
		for range runs {
			seeds = append(seeds, rand.Uint64())
		}
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Logf("seed %d (replay with TALLY_ORACLE_SEED=%d)", seed, seed)
			checkOracle(t, seed)
		})
	}
}

func checkOracle(t *testing.T, seed uint64) {
	world := oracle.Generate(seed, oracle.DefaultOptions())
	t.Log(world.Describe())
	catalog, err := rating.ParseCatalog([]byte(world.PlansYAML()))
	if err != nil {
		t.Fatalf("generated plans: %v\n%s", err, world.PlansYAML())
	}
	var configured []rating.Subscription
	for _, s := range world.Subscriptions() {
		configured = append(configured, rating.Subscription{Customer: s.Customer, Plan: s.Plan, Start: s.Start, End: s.End})
	}
	subs, err := rating.NewSubscriptions(configured, catalog)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 2)
	h.cfg.AllowedLateness = 10 * time.Minute
	// Outages are reported when they end, up to 20 h after a period they
	// began in ended: that period must still take them.
	h.cfg.FinalizeAfter = 72 * time.Hour
	h.rater = rating.NewPricing(catalog, subs, oracle.DefaultPlan)
	for _, c := range world.Customers() {
		h.cfg.Customers = append(h.cfg.Customers, Customer{ID: c.ID, Timezone: c.Timezone, BillingAnchorDay: c.BillingAnchorDay})
	}
	var meters []Meter
	for _, m := range world.Meters() {
		meters = append(meters, Meter{Name: m.Name, Aggregation: Aggregation(m.Aggregation), Window: m.Window, Align: m.Align})
	}
	if h.meters, err = CompileMeters(meters, time.Minute); err != nil {
		t.Fatal(err)
	}
	h.start()
	defer func() { h.cancel() }()

	// Feed in steps, keyed by customer to two partitions; between steps a
	// checkpoint, a crash or a graceful restart.
	rng := rand.New(rand.NewPCG(seed, 1))
	records := world.Records()
	var crashes, restarts int
	for i := 0; i < len(records); {
		for n := 1 + rng.IntN(60); n > 0 && i < len(records); n, i = n-1, i+1 {
			r := records[i]
			if r.Every { // a shared service's event: every partition gets it
				h.src.append(0, r.Value)
				h.src.append(1, r.Value)
				continue
			}
			h.src.append(int(r.Customer[len(r.Customer)-1]%2), r.Value)
		}
		switch rng.IntN(5) {
		case 0:
			h.checkpoint(rng.IntN(2) == 0)
			h.crash()
			crashes++
		case 1:
			h.checkpoint(false)
			h.stop()
			h.fresh()
			h.start()
			restarts++
		default:
			h.checkpoint(rng.IntN(4) == 0)
		}
	}
	h.checkpoint(false)
	// Close everything, as tally rate --until does: every window ends and
	// every period but the last settles.
	opts := oracle.DefaultOptions()
	if _, err := h.engine.AdvanceWatermark(context.Background(), opts.Start.Add(opts.Span+40*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	h.stop()
	h.fresh()
	wm := h.engine.Stats().Watermark
	for _, l := range h.sink.letters {
		t.Errorf("dead letter %s at %d/%d: %s (%s)", l.Reason, l.Partition, l.Offset, l.Detail, l.Raw)
	}
	checkDeltas(t, h)
	var rows []oracle.Row
	for _, r := range h.final() {
		rows = append(rows, oracle.Row{Meter: r.Meter, Customer: r.Customer, GroupKey: r.GroupKey, WindowStart: r.WindowStart,
			WindowEnd: r.WindowEnd, Quantity: r.Quantity, Count: r.Count, Amount: r.Amount, Final: r.Final})
	}
	rep := world.Check(rows, wm)
	for _, p := range rep.Problems {
		t.Error(p)
	}
	t.Logf("%d crashes, %d graceful restarts, watermark %s: %d windows, %d periods priced to the cent, %d fee rows, %d SLA credits",
		crashes, restarts, wm.Format(time.RFC3339), rep.Windows, rep.ExactPeriods, rep.FeeRows, rep.Credits)
}

// checkDeltas: every revision delivered once, the deltas of a row add up
// to its highest revision (the quantity of usage rows, the amount of
// every row) and its signs to 1, so additive rollups fed each revision
// once equal the highest revisions' totals.
func checkDeltas(t *testing.T, h *harness) {
	t.Helper()
	type sums struct {
		quantity, amount decimal.Decimal
		sign             int
	}
	got := map[string]*sums{}
	for _, r := range h.seen {
		s := got[r.Identity()]
		if s == nil {
			s = &sums{}
			got[r.Identity()] = s
		}
		s.quantity, s.amount, s.sign = s.quantity.Add(r.QuantityDelta), s.amount.Add(r.AmountDelta), s.sign+int(r.Sign)
	}
	revised := 0
	for id, r := range h.final() {
		if r.Revision > 1 {
			revised++
		}
		s := got[id]
		quantity := r.Quantity
		if strings.HasPrefix(r.GroupKey, "@") {
			quantity = decimal.Zero // a fee's or credit's quantity does not add up
		}
		if !s.amount.Equal(r.Amount) || !s.quantity.Equal(quantity) || s.sign != 1 {
			t.Errorf("%s revision %d: deltas add up to quantity %s, amount %s, sign %d; the row says %s, %s",
				id, r.Revision, s.quantity, s.amount, s.sign, quantity, r.Amount)
		}
	}
	if testing.Verbose() {
		t.Logf("deltas add up for %d rows, %d of them revised", len(got), revised)
	}
}
