package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/axiomhq/hyperloglog"
	"github.com/shopspring/decimal"
)

// windowName is a window's identity inside one tenant, by name, as state
// keys spell it. A period names a billing-period aggregate (all groups of a
// meter for a customer), kept for period-to-date figures and never emitted.
type windowName struct {
	meter, customer, groupKey string
	startNs                   int64
	period                    bool
}

// windowKey is a window's identity inside its shard: the meter's index in
// Meters and the ids the shard's names gave its customer and group key.
// 24 bytes without pointers, hashed without strings.
type windowKey struct {
	customer, group uint32
	startNs         int64
	meter           uint32
	period          bool
}

// window is the aggregate of one (meter, customer, group, window start). It is
// owned by exactly one shard goroutine; nothing else touches it.
type window struct {
	key   windowKey
	endNs int64
	// periodEndNs is when the billing period the window is charged in
	// settles (see meterSpec.settleEnd): the period's end, or the end of
	// its last window when windows do not nest in periods. It leads the
	// state key of the window and of the period aggregate, so a settled
	// and finalized period is one range delete.
	periodEndNs int64
	// mergedSeq is the checkpoint that wrote the window's current state to
	// its own state key (0: not there; see state/delta.go). A window leaves
	// memory only once that checkpoint is durable, so that a read-back never
	// finds an older state. Invariant: markDirty resets it.
	mergedSeq uint64
	count     uint64
	// nums are the window's exact decimals, read with get and changed with
	// set and addTo (a value too large for a num lives in x.big).
	nums [numFields]num
	// x holds the state of the other aggregations, nil until one needs it:
	// most windows are SUM or COUNT and go without it.
	x *windowExtra
	// revision is the last revision emitted; 0 means never emitted.
	revision uint64
	// period is, for a window, its billing-period aggregate while that is in
	// memory (see shard.apply); dropped marks a period aggregate that left
	// memory, so that windows holding it look it up again.
	period  *window
	dropped bool
	// feeQueued is set while a period is in the shard's fee list.
	feeQueued bool
	// changed is set when the aggregate differs from its last emitted revision.
	changed bool
	// emittedFinal is set when the last emitted revision was final.
	emittedFinal bool
	// dirty is set when the aggregate differs from its last checkpoint.
	dirty bool
	// queued is set while the window is in the shard's unemitted list.
	queued bool
	// perEvent is set when the window's price is per event: its events
	// were charged one by one, into numMoney.
	perEvent bool
	// rate names (an id in the shard's names, held while the window is in
	// the window table) the rate of the window's per-event price: a band or
	// destination prefix, which the charge's explanation gives. The engine
	// also put it in the group key, as dimension rate, for the row's
	// identity. 0 when the price has no rate; a dimension rate in the group
	// key is then the customer's own (state keeps that case as
	// flagOwnRate).
	rate uint32
}

// A window's exact decimals, by index in window.nums.
const (
	// numSum serves SUM and AVG.
	numSum = iota
	// numMoney is the sum of the window's event charges when its price is
	// per event (perEvent).
	numMoney
	// numEmittedMoney is, for a window, the money of its last emitted
	// revision; for a billing-period aggregate, the sum of event charges
	// already charged through its windows.
	numEmittedMoney
	// numEmittedAmount is the amount of the last emitted revision, so that
	// the revenue of a revision is counted as the difference.
	numEmittedAmount
	// numEmittedQuantity is, for a window, the quantity of its last
	// emitted revision; for a billing-period aggregate, the period-to-date
	// quantity already charged through its windows (see shard.emit).
	numEmittedQuantity
	// numChargedAmount is, for a billing-period aggregate, the sum of the
	// amounts its windows were charged: the base of its commitment true-up.
	numChargedAmount
	numFields
)

// get returns the window's decimal i (numSum, ...).
func (w *window) get(i int) decimal.Decimal {
	if n := w.nums[i]; !n.big {
		return n.decimal()
	}
	return w.x.big[i]
}

// set makes d the window's decimal i.
func (w *window) set(i int, d decimal.Decimal) {
	if n, ok := numOf(d); ok {
		w.nums[i] = n
		return
	}
	x := w.extra()
	if x.big == nil {
		x.big = new([numFields]decimal.Decimal)
	}
	x.big[i] = d
	w.nums[i] = num{big: true}
}

// addTo adds d to the window's decimal i.
func (w *window) addTo(i int, d decimal.Decimal) {
	if n, ok := numOf(d); ok && w.addNum(i, n) {
		return
	}
	w.set(i, w.get(i).Add(d))
}

// addNum adds n to the window's decimal i, if the sum fits a num; it
// reports whether it did.
func (w *window) addNum(i int, n num) bool {
	if w.nums[i].big {
		return false
	}
	sum, ok := addNum(w.nums[i], n)
	if ok {
		w.nums[i] = sum
	}
	return ok
}

// windowExtra is the state MIN, MAX, LATEST and the unique counts keep,
// and the window's decimals too large for a num.
type windowExtra struct {
	// extreme is MIN or MAX (valid when count > 0).
	extreme decimal.Decimal
	// latest is the value of the latest event by (time, topic, partition, offset).
	latest    decimal.Decimal
	latestPos eventPos
	// unique holds the distinct values of UNIQUE_COUNT, sketch those of
	// UNIQUE_COUNT_APPROX_HLL.
	unique map[string]struct{}
	sketch *hyperloglog.Sketch
	// big holds the window's decimals i whose nums[i] is big.
	big *[numFields]decimal.Decimal
	// announced and allowanceAnnounced are, for a period, the highest
	// shares (percent) of its entitlement's limit and of its free
	// allowance announced (see checkLimits); durable.
	announced, allowanceAnnounced decimal.Decimal
	// blocked is set on a period once a throttle or suspend of its limit
	// was announced, and resumed once resume was (resumeClosed); durable,
	// as window flags.
	blocked, resumed bool
}

// extra returns w.x, allocated on first use.
func (w *window) extra() *windowExtra {
	if w.x == nil {
		w.x = &windowExtra{}
	}
	return w.x
}

// eventPos orders events for LATEST: event time, then source position, so
// that ties resolve the same way on every replay.
type eventPos struct {
	timeNs    int64
	topic     string
	partition int32
	offset    int64
}

func (p eventPos) after(q eventPos) bool {
	switch {
	case p.timeNs != q.timeNs:
		return p.timeNs > q.timeNs
	case p.topic != q.topic:
		return p.topic > q.topic
	case p.partition != q.partition:
		return p.partition > q.partition
	default:
		return p.offset > q.offset
	}
}

// add folds one event of the window's meter into the window.
func (w *window) add(ev *Event) {
	first := w.count == 0
	w.count++
	switch ev.meter.Aggregation {
	case AggSum, AggAvg:
		if n, ok := numInt(ev.intValue); !ev.isInt || !ok || !w.addNum(numSum, n) {
			w.addTo(numSum, ev.Value())
		}
	case AggMin:
		if x, v := w.extra(), ev.Value(); first || v.LessThan(x.extreme) {
			x.extreme = v
		}
	case AggMax:
		if x, v := w.extra(), ev.Value(); first || v.GreaterThan(x.extreme) {
			x.extreme = v
		}
	case AggLatest:
		x := w.extra()
		pos := eventPos{timeNs: ev.TimeNs, topic: ev.Partition.Topic, partition: ev.Partition.Partition, offset: ev.Offset}
		if first || pos.after(x.latestPos) {
			x.latest, x.latestPos = ev.Value(), pos
		}
	case AggUniqueCount:
		x := w.extra()
		if x.unique == nil {
			x.unique = make(map[string]struct{})
		}
		x.unique[ev.Text] = struct{}{}
	case AggUniqueCountApprox:
		x := w.extra()
		if x.sketch == nil {
			x.sketch = hyperloglog.New14()
		}
		x.sketch.Insert([]byte(ev.Text))
	}
}

// addMoney adds one event's own charge (a per-event price).
func (w *window) addMoney(amount decimal.Decimal) {
	w.addTo(numMoney, amount)
	w.perEvent = true
}

// avgDecimals is the precision of AVG quantities (ClickHouse's scale).
const avgDecimals = 10

// quantity is the window's aggregate value; m is its meter.
func (w *window) quantity(m *meterSpec) decimal.Decimal {
	switch m.Aggregation {
	case AggSum:
		return w.get(numSum)
	case AggCount:
		return decimal.NewFromInt(int64(w.count))
	case AggMin, AggMax:
		if w.x == nil {
			return decimal.Decimal{}
		}
		return w.x.extreme
	case AggAvg:
		if w.count == 0 {
			return decimal.Zero
		}
		return w.get(numSum).DivRound(decimal.NewFromInt(int64(w.count)), avgDecimals)
	case AggLatest:
		if w.x == nil {
			return decimal.Decimal{}
		}
		return w.x.latest
	case AggUniqueCount:
		if w.x == nil {
			return decimal.Zero
		}
		return decimal.NewFromInt(int64(len(w.x.unique)))
	case AggUniqueCountApprox:
		if w.x == nil || w.x.sketch == nil {
			return decimal.Zero
		}
		// Estimate merges the sketch's pending sparse values, which changes
		// its encoding: estimate a copy, so that reading (the live API, an
		// emission) never changes the state a checkpoint holds.
		return decimal.NewFromInt(int64(w.x.sketch.Clone().Estimate()))
	}
	return decimal.Zero
}

// encodeWindowKey renders k as the state key: the period end first, so
// that finalized periods are one range, then the kind and the identity.
// Identifiers never contain NUL (the decoder refuses them), so NUL
// separates them unambiguously.
func encodeWindowKey(k windowName, periodEndNs int64) []byte {
	return appendWindowKey(make([]byte, 0, len(k.meter)+len(k.customer)+len(k.groupKey)+20), k, periodEndNs)
}

// appendWindowKey appends the state key of k to b.
func appendWindowKey(b []byte, k windowName, periodEndNs int64) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(periodEndNs))
	if k.period {
		b = append(b, 'p')
	} else {
		b = append(b, 'w')
	}
	b = append(b, k.meter...)
	b = append(b, 0)
	b = append(b, k.customer...)
	b = append(b, 0)
	b = append(b, k.groupKey...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(k.startNs))
}

func decodeWindowKey(b []byte) (windowName, int64, error) {
	var k windowName
	if len(b) < 9 || (b[8] != 'w' && b[8] != 'p') {
		return k, 0, fmt.Errorf("window key %q: unknown layout", b)
	}
	periodEndNs := int64(binary.BigEndian.Uint64(b))
	k.period = b[8] == 'p'
	b = b[9:]
	var parts [3]string
	for i := range parts {
		j := bytes.IndexByte(b, 0)
		if j < 0 {
			return k, 0, fmt.Errorf("window key %q: missing separator", b)
		}
		parts[i] = string(b[:j])
		b = b[j+1:]
	}
	if len(b) != 8 {
		return k, 0, fmt.Errorf("window key: start has %d bytes, want 8", len(b))
	}
	k.meter, k.customer, k.groupKey = parts[0], parts[1], parts[2]
	k.startNs = int64(binary.BigEndian.Uint64(b))
	return k, periodEndNs, nil
}

// windowValueVersion prefixes every encoded window so the layout can evolve.
// Version 2 added the per-event money after chargedAmount; version 1 values
// (without it) are still read. Version 4 is version 2 followed by a
// period's announced entitlement shares (windowExtra.announced), written
// only by periods that announced some (windowValueAnnounced).
const windowValueVersion = 2

// windowValueAnnounced is the version of a period value with announced
// entitlement shares.
const windowValueAnnounced = 4

// Window flags, the last byte of an encoded window.
const (
	flagChanged      = 1 << 0
	flagEmittedFinal = 1 << 1
	flagPerEvent     = 1 << 2
	// flagOwnRate marks a per-event window whose group key holds a
	// dimension "rate" of the customer's own, not a rate of the engine
	// (the window's rate is ""). Without it the rate is read from the group
	// key, where the engine puts it. A flag rather than a field: builds
	// that do not know it ignore it, so state stays readable both ways.
	flagOwnRate = 1 << 3
	// flagBlocked and flagResumed are a period's windowExtra.blocked and
	// resumed. Flags as well, so older builds read the state (and would
	// announce a resume again: at least once, with the same id).
	flagBlocked = 1 << 4
	flagResumed = 1 << 5
)

// pendingEmission reports whether w has something to emit: changes, or a
// provisional last revision that must be followed by a final one.
func (w *window) pendingEmission() bool {
	return w.changed || (w.revision > 0 && !w.emittedFinal)
}

// encodeWindowValue renders the durable part of w: its end (fixed when it
// opened, whatever the customer's time zone later), every aggregate field,
// the revision, the emitted amount and whether it changed since emission.
func encodeWindowValue(w *window, groupKey string) ([]byte, error) {
	return appendWindowValue(make([]byte, 0, 64), w, groupKey)
}

// appendWindowValue appends the encoded state of w, whose group key is
// groupKey, to b.
func appendWindowValue(b []byte, w *window, groupKey string) ([]byte, error) {
	announced := w.x != nil && (!w.x.announced.IsZero() || !w.x.allowanceAnnounced.IsZero())
	if announced {
		b = append(b, windowValueAnnounced)
	} else {
		b = append(b, windowValueVersion)
	}
	b = binary.AppendVarint(b, w.endNs)
	b = binary.AppendUvarint(b, w.count)
	b = w.appendNum(b, numSum)
	var none windowExtra // what a window without x encodes (on the stack)
	x := w.x
	if x == nil {
		x = &none
	}
	b = appendDecimal(b, x.extreme)
	b = appendDecimal(b, x.latest)
	b = binary.AppendVarint(b, x.latestPos.timeNs)
	b = appendBytes(b, []byte(x.latestPos.topic))
	b = binary.AppendVarint(b, int64(x.latestPos.partition))
	b = binary.AppendVarint(b, x.latestPos.offset)
	b = binary.AppendUvarint(b, uint64(len(x.unique)))
	for v := range x.unique {
		b = appendBytes(b, []byte(v))
	}
	var sketch []byte
	if x.sketch != nil {
		var err error
		if sketch, err = x.sketch.MarshalBinary(); err != nil {
			return nil, fmt.Errorf("encode sketch: %w", err)
		}
	}
	b = appendBytes(b, sketch)
	b = binary.AppendUvarint(b, w.revision)
	b = w.appendNum(b, numEmittedAmount)
	b = w.appendNum(b, numEmittedQuantity)
	b = w.appendNum(b, numChargedAmount)
	b = w.appendNum(b, numMoney)
	b = w.appendNum(b, numEmittedMoney)
	var flags byte
	if w.changed {
		flags |= flagChanged
	}
	if w.emittedFinal {
		flags |= flagEmittedFinal
	}
	if w.perEvent {
		flags |= flagPerEvent
		if w.rate == 0 && strings.Contains(groupKey, RateDim+"=") && groupDim(groupKey, RateDim) != "" {
			flags |= flagOwnRate
		}
	}
	if w.x != nil && w.x.blocked {
		flags |= flagBlocked
	}
	if w.x != nil && w.x.resumed {
		flags |= flagResumed
	}
	b = append(b, flags)
	if announced {
		b = appendDecimal(b, w.x.announced)
		b = appendDecimal(b, w.x.allowanceAnnounced)
	}
	return b, nil
}

// decodeWindowValue restores w, the window or period of key, from b.
func decodeWindowValue(b []byte, key windowName, w *window) (rate string, err error) {
	r := byteReader{b: b}
	version := r.byte()
	// Version 3 (the rate as a field) was written by one build of
	// 2026-11-29 only, before the rate became flagOwnRate: read, not written.
	if version < 1 || version > 4 {
		return "", fmt.Errorf("window value version %d, want 1 to 4", version)
	}
	w.endNs = r.varint()
	w.count = r.uvarint()
	sum := r.bytes() // read into w once w.x is settled
	var x windowExtra
	x.extreme = r.decimal()
	x.latest = r.decimal()
	x.latestPos.timeNs = r.varint()
	x.latestPos.topic = string(r.bytes())
	x.latestPos.partition = int32(r.varint())
	x.latestPos.offset = r.varint()
	if n := r.uvarint(); n > 0 && r.err == nil {
		if n > uint64(len(r.b)) {
			return "", fmt.Errorf("window value: %d unique values in %d bytes", n, len(r.b))
		}
		x.unique = make(map[string]struct{}, n)
		for range n {
			x.unique[string(r.bytes())] = struct{}{}
		}
	}
	if sketch := r.bytes(); len(sketch) > 0 && r.err == nil {
		x.sketch = hyperloglog.New14()
		if err := x.sketch.UnmarshalBinary(sketch); err != nil {
			return "", fmt.Errorf("window value: sketch: %w", err)
		}
	}
	w.x = nil
	if !x.extreme.IsZero() || !x.latest.IsZero() || x.latestPos != (eventPos{}) || x.unique != nil || x.sketch != nil {
		kept := x // only windows that have extra state allocate it
		w.x = &kept
	}
	w.revision = r.uvarint()
	w.nums = [numFields]num{}
	r.num(w, numSum, sum)
	r.num(w, numEmittedAmount, r.bytes())
	r.num(w, numEmittedQuantity, r.bytes())
	r.num(w, numChargedAmount, r.bytes())
	if version >= 2 {
		r.num(w, numMoney, r.bytes())
		r.num(w, numEmittedMoney, r.bytes())
	}
	var v3rate []byte
	if version == 3 {
		v3rate = r.bytes()
	}
	flags := r.byte()
	if version == windowValueAnnounced {
		x := w.extra()
		x.announced, x.allowanceAnnounced = r.decimal(), r.decimal()
	}
	if flags&(flagBlocked|flagResumed) != 0 {
		x := w.extra()
		x.blocked, x.resumed = flags&flagBlocked != 0, flags&flagResumed != 0
	}
	w.changed, w.emittedFinal = flags&flagChanged != 0, flags&flagEmittedFinal != 0
	w.perEvent = flags&flagPerEvent != 0
	switch {
	case version == 3:
		rate = string(v3rate)
	case w.perEvent && !key.period && flags&flagOwnRate == 0:
		// The engine put the rate in the group key (its dimension replaced
		// any of the event's).
		rate = groupDim(key.groupKey, RateDim)
	}
	if r.err != nil {
		return "", fmt.Errorf("window value: %w", r.err)
	}
	if len(r.b) != 0 {
		return "", fmt.Errorf("window value: %d trailing bytes", len(r.b))
	}
	return rate, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendDecimal(b []byte, d decimal.Decimal) []byte {
	var text [40]byte // the usual decimal fits: no allocation
	return appendBytes(b, appendDecimalText(text[:0], d))
}

// appendNum appends the window's decimal i as appendDecimal appends it.
func (w *window) appendNum(b []byte, i int) []byte {
	n := w.nums[i]
	if n.big {
		return appendDecimal(b, w.x.big[i])
	}
	var text [24]byte // the usual num fits: no allocation
	return appendBytes(b, appendNumText(text[:0], n))
}

// byteReader decodes the varint/decimal layouts above, keeping the first error.
type byteReader struct {
	b   []byte
	err error
}

func (r *byteReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.setErr(fmt.Errorf("truncated"))
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *byteReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.setErr(fmt.Errorf("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *byteReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.setErr(fmt.Errorf("bad varint"))
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *byteReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if uint64(len(r.b)) < n {
		r.setErr(fmt.Errorf("truncated: want %d bytes, have %d", n, len(r.b)))
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// num reads text, a decimal read with bytes, into the window's decimal i.
func (r *byteReader) num(w *window, i int, text []byte) {
	if r.err != nil {
		return
	}
	if n, ok := parseNum(text); ok {
		w.nums[i] = n
		return
	}
	d, err := decimal.NewFromString(string(text))
	if err != nil {
		r.setErr(err)
		return
	}
	w.set(i, d)
}

func (r *byteReader) decimal() decimal.Decimal {
	s := r.bytes()
	if r.err != nil {
		return decimal.Decimal{}
	}
	if n, ok := parseNum(s); ok {
		// The same value, parsed without a string: the same coefficient and
		// exponent too, but for a zero, which reads as 0 (the writer never
		// writes "0.00" while decimal.TrimTrailingZeros holds).
		return n.decimal()
	}
	d, err := decimal.NewFromString(string(s))
	if err != nil {
		r.setErr(err)
	}
	return d
}

// parseSmallInt parses an integer of 1 to 18 digits, optionally negative
// (no plus sign, no leading zeros but a lone 0, not -0), without allocating.
func parseSmallInt(s []byte) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if neg {
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 18 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	var v int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		if v == 0 {
			return 0, false // "-0" is not what appendDecimal writes
		}
		v = -v
	}
	return v, true
}

func (r *byteReader) setErr(err error) {
	if r.err == nil {
		r.err = err
	}
}

// floorDiv returns the largest multiple of size <= t (t may be negative).
func floorDiv(t, size int64) int64 {
	q := t / size
	if t%size != 0 && t < 0 {
		q--
	}
	return q * size
}
