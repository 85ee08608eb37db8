package engine

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tally-billing/tally/state"
)

// Queue bounds between stages. Each is a count of batches, not records; a
// batch holds at most one source fetch (bounded by the source's max fetch
// bytes), so memory in flight is bounded by these times that size.
const (
	inboundQueueBatches = 16 // decoded fetches waiting for the dispatcher
	shardQueueBatches   = 8  // event batches waiting for one shard
	// pendingCheckpoints is how many checkpoints may be cut but not yet
	// durable: one being written while the next is cut.
	pendingCheckpoints = 1
)

// inboundBatch is one decoded fetch of one partition, its events already
// routed to shards by the reader (so that the single dispatcher does not
// touch every event once more).
type inboundBatch struct {
	partition int // index into the dispatcher's partitions
	// events are the fetch's events, decoded in place; shards holds each
	// shard's indexes into them, in partition order (nil for a shard with
	// none). Shards read them concurrently and never write them.
	events *eventBatch
	shards [][]int32
	// maxEventTimeNs is the highest usage event time in the batch
	// (minWatermark if none): subscription events do not move time.
	maxEventTimeNs int64
	dead           []DeadLetter
	records        int // data records (transaction markers not counted)
	nextOffset     int64
	highWater      int64
	logStart       int64
}

// partitionProgress is the dispatcher's view of one partition.
type partitionProgress struct {
	id             PartitionID
	nextOffset     int64 // OffsetEarliest until the first record
	maxEventTimeNs int64 // minWatermark until the first event
	highWater      int64
	lastRecordAt   time.Time // wall clock, for idleness
	// fetch is shared with the partition's reader: whether it had nothing
	// to give (see fetchState).
	fetch *fetchState
}

// Run recovers state, then consumes until Shutdown (graceful, returns nil)
// or ctx ends (immediate, returns ctx's cause), or a fatal error.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	partitions, err := e.recover(ctx)
	if err != nil {
		return err
	}
	e.log.Info("state recovered", "checkpoint", e.committedSeq.Load(), "partitions", len(partitions), "shards", len(e.shards))

	// Every goroutine started below ends once ctx is cancelled and the shard
	// channels are closed; this deferred function does both, then waits.
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		e.wakeWaiters()
		for _, s := range e.shards {
			close(s.in)
		}
		wg.Wait()
	}()
	stopWaking := context.AfterFunc(ctx, e.wakeWaiters)
	defer stopWaking()
	fatal := func(err error) {
		if err != nil && ctx.Err() == nil {
			cancel(err)
		}
	}

	for _, s := range e.shards {
		wg.Go(s.run)
	}
	shards := e.shards
	e.live.Store(&shards)
	defer e.live.Store(nil)

	if err := e.startSinks(ctx, &wg, fatal); err != nil {
		return err
	}

	inbound := make(chan inboundBatch, inboundQueueBatches)
	readersCtx, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	// startReader opens partition i and reads it into inbound. The
	// dispatcher calls it for partitions discovered while running, so wg
	// never grows while Run waits on it.
	startReader := func(i int, p *partitionProgress) error {
		// Lag is 0 until the partition's first fetch tells its high-water mark.
		e.metrics.consumerLag.WithLabelValues(p.id.Topic, strconv.Itoa(int(p.id.Partition))).Set(0)
		reader, err := e.source.Open(ctx, p.id, p.nextOffset)
		if err != nil {
			return fmt.Errorf("engine: open partition %s at offset %d: %w", p.id, p.nextOffset, err)
		}
		wg.Go(func() {
			defer reader.Close()
			fatal(e.readPartition(readersCtx, i, p.id, p.fetch, reader, inbound))
		})
		return nil
	}
	for i, p := range partitions {
		if err := startReader(i, p); err != nil {
			return err
		}
	}
	discovered := make(chan PartitionID)
	if e.cfg.PartitionDiscovery > 0 {
		known := make(map[PartitionID]bool, len(partitions))
		for _, p := range partitions {
			known[p.id] = true
		}
		wg.Go(func() {
			fatal(e.discoverPartitions(readersCtx, e.cfg.PartitionDiscovery, known, e.topicIDs, discovered))
		})
	}
	inputs := dispatchInputs{partitions: partitions, inbound: inbound, discovered: discovered, startReader: startReader}

	writes := make(chan *pendingCheckpoint, pendingCheckpoints)
	writerDone := make(chan struct{})
	commitCtx, endCommits := e.commitContext(ctx)
	defer endCommits()
	go func() {
		defer close(writerDone)
		fatal(e.writeCheckpoints(ctx, commitCtx, writes))
	}()

	e.health.set(func(h *health) { h.started = true })
	graceful, err := e.newDispatcher(inputs, writes).run(ctx)
	stopping := time.Now()
	close(writes)
	stopReaders()
	<-writerDone
	if err == nil && graceful && !e.handingOver.Load() {
		written := time.Now()
		err = e.drainSinks(ctx)
		if err == nil {
			// Where a graceful stop's time goes: the final checkpoint
			// (open windows emitted, written), then the sinks.
			e.log.Info("stopped gracefully", "final_checkpoint", written.Sub(stopping).Round(time.Millisecond),
				"sink_drain", time.Since(written).Round(time.Millisecond))
		}
	}
	if cause := context.Cause(ctx); err == nil && cause != nil {
		err = cause
	}
	return err
}

// newPartitionProgress is a partition read from its first offset.
func newPartitionProgress(id PartitionID, now time.Time) *partitionProgress {
	return &partitionProgress{id: id, nextOffset: OffsetEarliest, maxEventTimeNs: minWatermark, lastRecordAt: now, fetch: &fetchState{}}
}

// recover loads the last checkpoint into fresh shards and returns the
// partitions to read with their offsets.
func (e *Engine) recover(ctx context.Context) ([]*partitionProgress, error) {
	seq, err := e.store.LastSeq()
	if err != nil {
		return nil, err
	}
	e.committedSeq.Store(seq)
	// The watermark comes back as it was: recomputing it from partitions
	// could move it back (a partition without data yet holds it), and a
	// watermark that goes back would accept records for windows that were
	// already evicted.
	wm, ok, err := e.store.Watermark()
	if err != nil {
		return nil, err
	}
	if !ok {
		wm = minWatermark
	}
	// What earlier runs' deletions removed bounds what this one accepts,
	// whatever its horizons (timeRules.goneEndNs). Set before the shards
	// copy the rules.
	if g, ok, err := e.store.Gone(); err != nil {
		return nil, err
	} else if ok {
		e.rules.goneEndNs, e.rules.goneSettleNs, e.rules.goneBucketNs = g.WindowEndNs, g.SettleNs, g.DedupBucketNs
	} else if wm != minWatermark {
		e.log.Warn("state written by an older version does not record how far its deletions reached: start once with reviseHorizon, finalizeAfter and dedupHorizon as they were (the first checkpoint records it) before lengthening any of them")
	}
	// The watermark of the run that wrote the state: it opened every fee
	// period up to it, and evicted nothing after it. Recovery may move wm
	// further (a lowered allowedLateness), past periods no run opened: fee
	// periods are opened from storedWm on (feeFrom below), and a period
	// that closed in between is read back and charged (openFeePeriodAt).
	storedWm := wm

	stored, err := e.store.Partitions()
	if err != nil {
		return nil, err
	}
	byID := make(map[PartitionID]state.PartitionProgress, len(stored))
	for _, p := range stored {
		byID[PartitionID{Topic: p.Topic, Partition: p.Partition}] = p
	}
	ids, err := e.source.Partitions(ctx)
	if err != nil {
		return nil, fmt.Errorf("engine: list source partitions: %w", err)
	}
	recorded, err := e.store.TopicIDs()
	if err != nil {
		return nil, err
	}
	if e.unrecordedTopicIDs, err = e.checkTopicIDs(ctx, recorded); err != nil {
		return nil, err
	}
	e.topicIDs = recorded
	maps.Copy(e.topicIDs, e.unrecordedTopicIDs)
	if err := e.recoverPartitionCounts(ids); err != nil {
		return nil, err
	}
	now := e.now()
	out := make([]*partitionProgress, len(ids))
	for i, id := range ids {
		p := newPartitionProgress(id, now)
		if s, ok := byID[id]; ok {
			p.nextOffset, p.maxEventTimeNs = s.NextOffset, s.MaxEventTimeNs
		}
		out[i] = p
	}
	wm = e.watermark(out, now, wm)

	e.shards = make([]*shard, e.cfg.Shards)
	for i := range e.shards {
		e.shards[i] = newShard(i, e.cfg.Tenant, e.rules, e.decoder.meters, e.customers, e.rater, e.store, shardQueueBatches)
		e.shards[i].watermarkNs = wm
		e.shards[i].seq, e.shards[i].durableSeq = seq, seq
		// What the store may have deleted is judged at the watermark in
		// use (a new subscriber's backdated periods follow the late rule
		// at it); with no stored watermark, nothing was ever evicted.
		e.shards[i].deletedThroughNs = wm
		e.shards[i].slaExtendedWm = storedWm
		if storedWm == minWatermark {
			e.shards[i].deletedThroughNs = minWatermark
		}
		if e.decoder.minEventTimeNs != 0 {
			e.shards[i].feeFloorNs = e.decoder.minEventTimeNs
		}
		if e.cfg.MaxLiveWindows > 0 {
			e.shards[i].maxWindows = max(1, e.cfg.MaxLiveWindows/len(e.shards))
		}
		e.shards[i].watchLimits = e.watchesLimits()
		e.shards[i].announceLifecycle = len(e.cfg.ActionSinks) > 0
		if !e.noEarlyCheckpoints {
			e.shards[i].actionQueued = e.actionQueued
		}
		if rules, ok := e.rater.(EntitlementRules); ok {
			e.shards[i].drawsGrants = rules.HasGrants()
		}
		if rules, ok := e.rater.(SLARules); ok {
			e.shards[i].measuresSLA = rules.HasSLA()
		}
	}
	n := uint64(len(e.shards))
	// The delta log holds the latest state of every window that was in
	// memory since its last base; a window's own key only what left memory
	// (or what an older version wrote). Read the log first, so that the
	// pass over the own keys skips windows it holds newer.
	logged, logBytes, err := e.readDeltaLog()
	if err != nil {
		return nil, err
	}
	e.logSize = deltaLogSize{sinceBase: logBytes, minBase: cmp.Or(e.cfg.DeltaBaseMinBytes, minBaseBytes)}
	// restore installs one stored window or period, if it belongs in
	// memory; mergedSeq says whether its own key holds this state. It
	// reports whether it did.
	restore := func(key windowName, periodEndNs int64, v []byte, mergedSeq uint64) (bool, error) {
		w := &window{periodEndNs: periodEndNs, mergedSeq: mergedSeq}
		rate, err := decodeWindowValue(v, key, w)
		if err != nil {
			return false, fmt.Errorf("engine: recover window %v: %w: state is corrupt", key, err)
		}
		// Only what is in memory's horizon comes back into memory; the rest
		// stays in the store until a late record reads it.
		hotUntil := w.endNs
		if key.period {
			hotUntil = w.periodEndNs // a period lives until it settles
		}
		if !e.rules.hot(hotUntil, wm) && (key.period || !w.pendingEmission()) {
			return false, nil
		}
		if err := e.shards[routingHash(key.customer)%n].restoreWindow(key, w, rate); err != nil {
			return false, fmt.Errorf("engine: recover: %w", err)
		}
		return true, nil
	}
	var migratedPuts []state.KV
	var migratedDeletes [][]byte
	err = e.store.Windows(func(k, v []byte) error {
		key, periodEndNs, err := decodeWindowKey(k)
		if err != nil {
			return fmt.Errorf("engine: recover: %w: state is corrupt", err)
		}
		// One placement a key serves the migration and the check.
		p, configured := e.placement(key)
		if lead, ok := settleMigration(key, periodEndNs, p, configured); ok {
			migratedDeletes = append(migratedDeletes, append([]byte(nil), k...))
			migratedPuts = append(migratedPuts, state.KV{Key: encodeWindowKey(key, lead), Value: append([]byte(nil), v...)})
			periodEndNs = lead
		}
		if key.period {
			if err := e.checkPlacement(key, periodEndNs, p, configured); err != nil {
				return fmt.Errorf("engine: refusing to start: %w", err)
			}
		}
		logKey := string(encodeWindowKey(key, periodEndNs))
		if l, ok := logged[logKey]; ok {
			if !bytes.Equal(l, v) {
				return nil // the log holds a newer state
			}
			delete(logged, logKey) // merged as it is
		}
		_, err = restore(key, periodEndNs, v, seq)
		return err
	})
	if err != nil {
		return nil, err
	}
	// What only the log holds is installed shard by shard, side by side:
	// each shard's windows are its own, and the rest of what restore reads
	// (rules, the watermark, and Meters, read-only once built: keep it so)
	// is not written while recovering.
	type loggedWindow struct {
		stateKey    string
		key         windowName
		periodEndNs int64
		value       []byte
	}
	// Sized up front (a quarter over an even share): growing slices of
	// millions of entries copied them again and again, a third of a
	// 1M-window recovery.
	live := 0 // what the lists will hold: the log's entries but its tombstones
	for _, v := range logged {
		if len(v) > 0 {
			live++
		}
	}
	byShard := make([][]loggedWindow, n)
	for i := range byShard {
		byShard[i] = make([]loggedWindow, 0, live/int(n)+live/(4*int(n))+16)
	}
	periodsOf := make([]int, n)
	for k, v := range logged {
		if len(v) == 0 {
			continue // left memory: its own key holds it, or nothing
		}
		key, periodEndNs, err := decodeWindowKey([]byte(k))
		if err != nil {
			return nil, fmt.Errorf("engine: recover: %w: state is corrupt", err)
		}
		i := routingHash(key.customer) % n
		if key.period {
			periodsOf[i]++
			p, configured := e.placement(key)
			if err := e.checkPlacement(key, periodEndNs, p, configured); err != nil {
				return nil, fmt.Errorf("engine: refusing to start: %w", err)
			}
		}
		byShard[i] = append(byShard[i], loggedWindow{k, key, periodEndNs, v})
	}
	shardMerges := make([][]state.KV, n)
	errs := make([]error, n)
	var installing sync.WaitGroup
	var failed atomic.Bool
	for i, ws := range byShard {
		installing.Go(func() {
			e.shards[i].reserve(len(ws)-periodsOf[i], periodsOf[i])
			for _, lw := range ws {
				if failed.Load() {
					return
				}
				restored, err := restore(lw.key, lw.periodEndNs, lw.value, 0)
				if err != nil {
					errs[i] = err
					failed.Store(true)
					return
				}
				// A window or period left out of memory whose latest state
				// is only in the log is merged into its own key now, where
				// a late record (with finalizeAfter) or the emission of a
				// window still due reads it back (a due window's period may
				// be past its horizon), until the range delete of its
				// settled period removes it.
				if !restored {
					shardMerges[i] = append(shardMerges[i], state.KV{Key: []byte(lw.stateKey), Value: lw.value})
				}
			}
		})
	}
	installing.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err // one shard's: a removed meter would say the same in each
		}
	}
	merges := slices.Concat(shardMerges...)
	if err := e.commitSettleMigration(ctx, seq, migratedPuts, migratedDeletes); err != nil {
		return nil, err
	}
	if len(merges) > 0 {
		if err := e.commit(ctx, &state.Checkpoint{Seq: seq, WindowPuts: merges}); err != nil {
			return nil, fmt.Errorf("engine: recover: merge %d windows left out of memory: %w", len(merges), err)
		}
	}
	// Subscribers owe fees from their subscription's start in a fresh
	// state; after a restart from the period at the stored watermark on,
	// since the run that wrote the state opened every period before it
	// (openFeePeriods); not from the recovered one, which may be further
	// (a lowered allowedLateness) past periods no run opened. A subscriber
	// configured while state exists thus owes fees from the period at the
	// stored watermark on.
	feeFrom := int64(feeFromSubscription)
	if storedWm != minWatermark {
		feeFrom = storedWm
	}
	if rules, ok := e.rater.(SubscriptionRules); ok {
		for _, c := range rules.Subscribers() {
			e.shards[routingHash(c)%n].addFeeCustomerFrom(c, feeFrom)
		}
	}
	err = e.store.Subscriptions(func(k, v []byte) error {
		changes, err := decodeChanges(v)
		if err != nil {
			return fmt.Errorf("engine: recover subscriptions of %q: %w: state is corrupt", k, err)
		}
		sh := e.shards[routingHash(string(k))%n]
		sh.subs[string(k)] = changes
		sh.addFeeCustomerFrom(string(k), feeFrom)
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = e.store.Grants(func(k, v []byte) error {
		b, err := decodeBalance(k, v)
		if err != nil {
			return fmt.Errorf("engine: recover grants: %w: state is corrupt", err)
		}
		e.shards[routingHash(b.customer)%n].restoreBalance(b, wm)
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = e.store.SLAPeriods(func(k, v []byte) error {
		sp, err := decodeSLAPeriod(k, v)
		if err != nil {
			return fmt.Errorf("engine: recover SLA measurements: %w: state is corrupt", err)
		}
		e.shards[routingHash(sp.key.customer)%n].restoreSLAPeriod(sp)
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = e.store.SLAServices(func(k, v []byte) error {
		for _, sh := range e.shards { // every shard keeps the same copy
			if err := sh.restoreService(k, v); err != nil {
				return fmt.Errorf("engine: recover SLA services: %w: state is corrupt", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	memoryExpiry, expiry := e.rules.dedupMemoryExpiry(wm), e.rules.dedupExpiry(wm)
	err = e.store.Dedup(func(d state.DedupEntry) error {
		if d.BucketNs < expiry { // older ones are about to be deleted
			return nil
		}
		if d.RoutingHash == broadcastRouting { // a shared service's event: every shard applied it
			for _, sh := range e.shards {
				sh.dedup.load(d.BucketNs, d.IDHash, memoryExpiry, expiry)
			}
			return nil
		}
		e.shards[d.RoutingHash%n].dedup.load(d.BucketNs, d.IDHash, memoryExpiry, expiry)
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.stats.watermarkNs.Store(wm)
	return out, nil
}

// readPartition fetches, decodes and forwards one partition, in order.
// Decoding happens here, one goroutine per partition, so it runs in parallel.
func (e *Engine) readPartition(ctx context.Context, index int, id PartitionID, fetch *fetchState, r PartitionReader, out chan<- inboundBatch) error {
	in := NewInterner() // customers and groups recur: windows share their strings
	for {
		fetch.waiting(e.now())
		records, err := r.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("engine: read %s: %w", id, err)
		}
		// A fetch goes on in batches of at most maxBatchRecords: batches
		// are recycled, and a recycled batch keeps its size.
		for len(records) > 0 {
			n := min(len(records), maxBatchRecords)
			if !e.forward(ctx, index, id, fetch, records[:n], in, out) {
				return nil
			}
			records = records[n:]
		}
	}
}

// forward decodes records (one batch) and sends them to the dispatcher; false
// when ctx ended first.
func (e *Engine) forward(ctx context.Context, index int, id PartitionID, fetch *fetchState, records []Record, in *Interner, out chan<- inboundBatch) bool {
	var err error
	fetch.fetched() // the batch counts as queued until the dispatcher takes it
	b := inboundBatch{partition: index, events: e.eventBatch(len(records)), shards: make([][]int32, len(e.shards)),
		maxEventTimeNs: minWatermark, logStart: records[0].LogStart}
	all := b.events.events
	for _, rec := range records {
		if rec.Control {
			continue // a transaction marker: it moves the position only
		}
		b.records++
		at, offset := origin(id, rec)
		first := len(all)
		all, err = e.decoder.DecodeInterned(rec.Value, all, rec.Timestamp, in)
		if err == nil && len(all) > first && all[first].Customer != "" { // a shared service's SLA event has none
			if why := e.owners.misplaced(id, all[first].Customer); why != "" {
				all = all[:first]
				err = &decodeError{reason: ReasonWrongPartition, detail: why}
			}
		}
		if err != nil {
			var de *decodeError
			if !errors.As(err, &de) {
				de = &decodeError{reason: ReasonInvalidJSON, detail: err.Error()}
			}
			b.dead = append(b.dead, DeadLetter{Reason: de.reason, Detail: de.detail,
				Topic: at.Topic, Partition: at.Partition, Offset: offset, Raw: rec.Value})
			continue
		}
		for i, n := first, len(all); i < n; i++ {
			ev := &all[i]
			ev.Partition, ev.Offset, ev.Raw = at, offset, rec.Value
			// A subscription, grant or SLA event's time is when its
			// change takes effect (possibly months ahead, or an outage's
			// start long ago): only usage moves time.
			if ev.TimeNs > b.maxEventTimeNs && !ev.Subscription && ev.Grant == nil && ev.SLA == nil {
				b.maxEventTimeNs = ev.TimeNs
			}
			if ev.SLA != nil && ev.SLA.Service != "" {
				// A shared service's probe or outage: every shard measures
				// it for its customers, each from its own copy.
				b.shards[0] = append(b.shards[0], int32(i))
				for s := 1; s < len(b.shards); s++ {
					all = append(all, all[i])
					b.shards[s] = append(b.shards[s], int32(len(all)-1))
				}
				continue
			}
			s := routingHash(ev.Customer) % uint64(len(b.shards))
			b.shards[s] = append(b.shards[s], int32(i))
		}
	}
	b.events.events = all
	last := records[len(records)-1]
	b.nextOffset, b.highWater = last.Offset+1, last.HighWater
	select {
	case out <- b:
		return true
	case <-ctx.Done():
		return false
	}
}

// origin is where rec was produced: its Origin when it was re-keyed, else
// where it was read (partition id).
func origin(id PartitionID, rec Record) (PartitionID, int64) {
	if rec.Origin.Topic != "" {
		return PartitionID{Topic: rec.Origin.Topic, Partition: rec.Origin.Partition}, rec.Origin.Offset
	}
	return id, rec.Offset
}

// maxBatchRecords bounds the records of one batch (a fetch may hold
// hundreds of thousands): a batch of Events is ~280 bytes a record, and
// up to cap(eventSlices) of them stay allocated for reuse.
const maxBatchRecords = 4096

// eventBatch is the events of one batch, shared by the shards that apply
// them; the last one done gives the slice back.
type eventBatch struct {
	events []Event
	// pending counts the shards yet to apply their events (set by the
	// dispatcher before it sends any).
	pending atomic.Int32
	free    chan *eventBatch
}

// done is called by each shard once it applied its events.
func (b *eventBatch) done() {
	if b.pending.Add(-1) == 0 {
		clear(b.events) // nothing keeps a pointer into them once applied
		b.events = b.events[:0]
		select {
		case b.free <- b:
		default: // enough batches at hand
		}
	}
}

// eventBatch returns an empty batch for about n events, recycled when one
// is at hand.
func (e *Engine) eventBatch(n int) *eventBatch {
	select {
	case b := <-e.eventSlices:
		return b
	default:
		return &eventBatch{events: make([]Event, 0, n), free: e.eventSlices}
	}
}
