package engine

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/tally-billing/tally/rating"
	"github.com/tally-billing/tally/state"
)

// Shared services. A probe or an outage may name a service instead of a
// customer:
//
//	{"type":"sla.outage","id":"o-9","service":"core-network","outage":"inc-9","time":"…","end":"…"}
//
// It counts for every customer whose plan has an objective on that service
// (rating.Objective.Service), with the customer's own events. Such an
// event reaches every shard (forward copies it), and every shard keeps the
// same copy of the service (slaService), so each measures its own
// customers without asking another; shard 0 alone writes it to the store,
// and each shard reads it back at recovery. Producers send it to every
// partition of the usage topic when tasks own partitions (scaleOut local
// or group): each task measures its own customers; one engine reading
// every partition counts the copies once (they share an id).
//
// Rules (README, Plans → SLA objectives and credits):
//   - Probes are kept by quarter hour: every zone's midnight falls on one,
//     so a customer's local days and billing periods are whole quarter
//     hours, and measurements are as exact as for a customer's own probes.
//   - A probe is late once a billing period holding its time could be
//     settled (its time + reviseHorizon, or finalizeAfter, is past the
//     watermark): any customer's period holding it is then still open.
//   - An outage keeps each version an event gave it, with the watermark
//     it became known at; a period counts the last version known before
//     it settled, so what a settled period measures never changes.

// quarterHourNs is the span of a service's probe bucket.
const quarterHourNs = int64(15 * time.Minute)

// serviceRetentionNs bounds how long after its time a service's data may
// count for some billing period: a period holding it ends within 32 days,
// and its meters' windows settle within 32 days of that end.
const serviceRetentionNs = int64(64 * 24 * time.Hour)

// broadcastRouting is the routing hash remembered with the dedup ids of a
// service's events: recovery gives them to every shard.
const broadcastRouting = math.MaxUint64

// slaService is what a shared service's probes and outages measured.
type slaService struct {
	// buckets are the probes by the quarter hour they fall in.
	buckets map[int64]*probeDay
	// outages are each outage's versions, in the order they became known.
	outages map[string][]outageVersion
}

// outageVersion is an outage as an event gave it, and the watermark it
// was applied at.
type outageVersion struct {
	interval
	knownNs int64
}

// serviceTouch is the span of a service's time whose measurement
// changed since the last barrier, in periods that may have closed (one
// span holding every change: marking a period more than needed only
// recomputes its credits).
// atNs is the earliest watermark a change was applied at: a period not
// settled then counts it (serviceSamples), so its credits follow, even
// when the barrier's watermark has passed its settle end.
type serviceTouch struct{ from, to, atNs int64 }

// touchService adds [from, to), changed at the watermark, to the
// service's changed span.
func (s *shard) touchService(service string, from, to int64) {
	at := s.watermarkNs
	if t, ok := s.slaServiceTouched[service]; ok {
		from, to, at = min(from, t.from), max(to, t.to), min(at, t.atNs)
	}
	s.slaServiceTouched[service] = serviceTouch{from, to, at}
}

// serviceData returns service, made when missing.
func (s *shard) serviceData(service string) *slaService {
	svc := s.slaServices[service]
	if svc == nil {
		svc = &slaService{buckets: map[int64]*probeDay{}, outages: map[string][]outageVersion{}}
		s.slaServices[service] = svc
	}
	return svc
}

// applyServiceSLA records a shared service's probe or outage.
//
// Invariant (exactly once, and the same in every shard): every shard
// applies the same events at the same watermarks, so their copies agree;
// the dedup id is remembered with broadcastRouting, so every shard knows
// it after a recovery.
func (s *shard) applyServiceSLA(ev *Event) {
	e := ev.SLA
	late := func(what string) {
		if s.index == 0 { // one dead letter for the copies of every shard
			s.deadLetter(ev, ReasonLate, fmt.Sprintf("%s of service %s: %s: watermark %s", ev.Meter, e.Service, what, formatTimeNs(s.watermarkNs)))
		}
	}
	if rules, _ := s.rater.(SLARules); rules == nil || !rules.MeasuresService(e.Service) {
		if s.index == 0 {
			s.deadLetter(ev, ReasonInvalidField, fmt.Sprintf("no SLA objective measures service %q (an objective's service field names it)", e.Service))
		}
		return
	}
	// Duplicates first: with one engine reading every partition, the
	// copies of another partition are duplicates, whenever they come.
	if s.seen(ev, eventIDHash(ev.Source, ev.ID, slaMeter+":"+e.Service)) {
		if s.index == 0 {
			s.pending.duplicates[slaMeter]++
		}
		return
	}
	switch {
	case e.Kind == SLAProbe && s.slaSettled(ev.TimeNs):
		late(fmt.Sprintf("a billing period holding %s may be settled", formatTimeNs(ev.TimeNs)))
		return
	case e.Kind == SLAProbe && floorDiv(ev.TimeNs, dedupBucketNs) < s.rules.dedupExpiry(s.watermarkNs):
		late(fmt.Sprintf("probe of %s is older than dedupHorizon, so a retry of it could not be recognised", formatTimeNs(ev.TimeNs)))
		return
	case e.Kind == SLAOutage && s.slaSettled(s.outageLast(interval{ev.TimeNs, e.EndNs})+1):
		late("every billing period the outage overlaps may be settled")
		return
	}
	svc := s.serviceData(e.Service)
	switch e.Kind {
	case SLAProbe:
		bucket := floorDiv(ev.TimeNs, quarterHourNs)
		addProbe(svc.buckets, bucket, e)
		s.dirtyService(serviceStoreKey(e.Service, 'p', bucketKey(bucket)))
		// Only a probe older than the grace can be in a closed period.
		if ev.TimeNs+s.rules.graceNs <= s.watermarkNs {
			s.touchService(e.Service, ev.TimeNs, ev.TimeNs+1)
		}
	case SLAOutage:
		o := interval{ev.TimeNs, e.EndNs}
		versions := svc.outages[e.Ref]
		open := func(end int64) int64 { // not over: up to the watermark
			if end == 0 {
				return math.MaxInt64
			}
			return end
		}
		touch := serviceTouch{from: o.startNs, to: open(o.endNs)}
		if len(versions) > 0 {
			prev := versions[len(versions)-1]
			if prev.interval == o {
				return
			}
			touch.from, touch.to = min(touch.from, prev.startNs), max(touch.to, open(prev.endNs))
		}
		svc.outages[e.Ref] = append(versions, outageVersion{o, s.watermarkNs})
		s.dirtyService(serviceStoreKey(e.Service, 'o', []byte(e.Ref)))
		s.touchService(e.Service, touch.from, touch.to)
	}
}

// dirtyService marks a stored key of a service changed (shard 0 writes).
func (s *shard) dirtyService(key string) {
	if s.index == 0 {
		s.pending.serviceDirty[key] = true
	}
}

// serviceSamples adds to x what o's service measured in sp: its probes,
// and the last version of each outage known before sp settled.
func (s *shard) serviceSamples(x *slaSamples, sp *slaPeriod, o *rating.Objective) {
	svc := s.slaServices[o.Service]
	if o.Service == "" || svc == nil {
		return
	}
	x.probes = append(x.probes, svc.buckets)
	for _, versions := range svc.outages {
		for i := len(versions) - 1; i >= 0; i-- {
			if v := versions[i]; !s.rules.settledAt(sp.settleNs, v.knownNs) {
				x.outages = append(x.outages, v.interval)
				break
			}
		}
	}
}

// serviceTouchedDue marks due the closed, unsettled periods whose
// objectives measure a service that changed in them since the last
// barrier.
func (s *shard) serviceTouchedDue(wm int64) {
	if len(s.slaServiceTouched) == 0 {
		return
	}
	rules, _ := s.rater.(SLARules)
	for k, sp := range s.slaPeriods {
		if rules == nil || !s.slaClosed(sp, wm) || s.slaDue[k] != nil {
			continue
		}
		terms, ok := rules.SLA(s.subscriber(k.customer), time.Unix(0, sp.endNs).UTC())
		if !ok {
			continue
		}
		for service, t := range s.slaServiceTouched {
			if t.from >= sp.endNs || t.to <= sp.key.startNs || s.rules.settledAt(sp.settleNs, t.atNs) {
				continue
			}
			if slices.ContainsFunc(terms.Objectives, func(o rating.Objective) bool { return o.Service == service }) {
				s.slaDue[k] = sp
				break
			}
		}
	}
	clear(s.slaServiceTouched)
}

// evictServices drops, once a day of watermark, what no billing period
// can count any more: data whose time plus serviceRetentionNs is settled,
// and older than any period kept in memory for an open issue could be (it
// is measured again when the issue falls due; kept while an issue opened
// in it is not due: its end is within the longest `within` of the
// watermark, its start 32 days before).
//
// Invariant: the rule reads only the watermark and the catalog, the same
// in every shard, as shard 0 alone deletes the stored copy.
func (s *shard) evictServices(wm int64, snap *shardSnapshot) {
	day := floorDiv(wm, int64(24*time.Hour))
	if len(s.slaServices) == 0 || day == s.slaServiceEvictDay {
		return
	}
	s.slaServiceEvictDay = day
	var within int64
	if rules, ok := s.rater.(SLARules); ok {
		within = int64(rules.MaxWithin())
	}
	done := func(tNs int64) bool {
		return s.rules.settledAt(tNs+serviceRetentionNs, wm) && tNs+serviceRetentionNs+within < wm
	}
	for _, name := range slices.Sorted(maps.Keys(s.slaServices)) {
		svc := s.slaServices[name]
		for bucket := range svc.buckets {
			if done(bucket + quarterHourNs) {
				delete(svc.buckets, bucket)
				s.deleteService(snap, serviceStoreKey(name, 'p', bucketKey(bucket)))
			}
		}
		for ref, versions := range svc.outages {
			last := int64(math.MinInt64)
			for _, v := range versions {
				last = max(last, v.endNs, v.knownNs)
				if v.endNs == 0 {
					last = math.MaxInt64 - serviceRetentionNs // not over: kept
				}
			}
			if done(last) {
				delete(svc.outages, ref)
				s.deleteService(snap, serviceStoreKey(name, 'o', []byte(ref)))
			}
		}
		if len(svc.buckets) == 0 && len(svc.outages) == 0 {
			delete(s.slaServices, name)
		}
	}
}

func (s *shard) deleteService(snap *shardSnapshot, key string) {
	if s.index == 0 {
		delete(s.pending.serviceDirty, key)
		snap.serviceDeletes = append(snap.serviceDeletes, []byte(key))
	}
}

// snapshotServices adds the service data changed since the last barrier
// to snap (shard 0's copy).
func (s *shard) snapshotServices(snap *shardSnapshot) {
	for _, key := range slices.Sorted(maps.Keys(s.pending.serviceDirty)) {
		name, rest, _ := strings.Cut(key, "\x00")
		svc := s.slaServices[name]
		if svc == nil || len(rest) == 0 {
			continue
		}
		var v []byte
		switch rest[0] {
		case 'p':
			d := svc.buckets[int64(binary.BigEndian.Uint64([]byte(rest[1:])))]
			if d == nil {
				continue
			}
			v = appendProbeDay([]byte{serviceFormat}, d)
		case 'o':
			versions := svc.outages[rest[1:]]
			v = binary.AppendUvarint([]byte{serviceFormat}, uint64(len(versions)))
			for _, ov := range versions {
				v = binary.AppendVarint(v, ov.startNs)
				v = binary.AppendVarint(v, ov.endNs)
				v = binary.AppendVarint(v, ov.knownNs)
			}
		}
		snap.servicePuts = append(snap.servicePuts, state.KV{Key: []byte(key), Value: v})
	}
	clear(s.pending.serviceDirty)
}

// serviceFormat leads an encoded probe bucket or outage of a service.
const serviceFormat = 1

func bucketKey(bucket int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(bucket)) }

// serviceStoreKey is service NUL kind key ('p': a probe bucket's start;
// 'o': an outage's ref).
func serviceStoreKey(service string, kind byte, key []byte) string {
	return service + "\x00" + string(kind) + string(key)
}

// restoreService adds a stored probe bucket or outage of a service at
// recovery.
func (s *shard) restoreService(key, v []byte) error {
	name, rest, ok := strings.Cut(string(key), "\x00")
	if !ok || len(rest) == 0 || rest[0] != 'p' && rest[0] != 'o' || rest[0] == 'p' && len(rest) != 9 {
		return fmt.Errorf("SLA service key %q is not service NUL p<bucket> or o<ref>", key)
	}
	r := byteReader{b: v}
	if f := r.byte(); r.err == nil && f != serviceFormat {
		return fmt.Errorf("SLA service %s: format %d, this version reads %d", name, f, serviceFormat)
	}
	svc := s.serviceData(name)
	if rest[0] == 'p' {
		svc.buckets[int64(binary.BigEndian.Uint64([]byte(rest[1:])))] = readProbeDay(&r, len(v))
	} else {
		n := r.uvarint()
		if r.err == nil && n > uint64(len(v)) {
			return fmt.Errorf("SLA service %s: %d outage versions in %d bytes", name, n, len(v))
		}
		var versions []outageVersion
		for range n {
			versions = append(versions, outageVersion{interval{r.varint(), r.varint()}, r.varint()})
		}
		svc.outages[rest[1:]] = versions
	}
	if r.err != nil {
		return fmt.Errorf("SLA service %s: %w", name, r.err)
	}
	if len(r.b) != 0 {
		return fmt.Errorf("SLA service %s: %d trailing bytes", name, len(r.b))
	}
	return nil
}
