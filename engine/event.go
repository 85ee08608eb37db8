package engine

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"github.com/tally-billing/tally/rating"
)

// PartitionID names one source partition.
type PartitionID struct {
	Topic     string
	Partition int32
}

func (p PartitionID) String() string { return fmt.Sprintf("%s/%d", p.Topic, p.Partition) }

// Record is one raw message read from a source partition. Value is owned by
// the engine once delivered.
type Record struct {
	Offset    int64
	Key       []byte
	Value     []byte
	HighWater int64 // the partition's high-water mark when the record was read
	// Timestamp is the time the producer or broker stamped on the record
	// (zero if the source has none). maxFutureSkew is measured from it, so
	// that an audit re-reading the topic later decides as the live run did.
	Timestamp time.Time
	// Control marks a transaction's commit or abort marker: it moves the
	// partition's position and holds no usage (never decoded, never a dead
	// letter).
	Control bool
	// LogStart is the partition's first offset still in the log when the
	// record was read (0 if the source does not say): above the offset a
	// partition was first read from, retention deleted records unread.
	LogStart int64
	// Origin is where the record was produced when it reached this
	// partition re-keyed (kafka.repartition); Topic "" otherwise. Its dead
	// letters and its place among equal times (LATEST) name the origin, as
	// they would without the re-keying.
	Origin Position
}

// Position is a record's place in a topic.
type Position struct {
	Topic     string
	Partition int32
	Offset    int64
}

// Dim is one dimension of an event, e.g. destination=UK.
type Dim struct {
	Key, Value string
}

// Event is a decoded usage event.
type Event struct {
	ID       string
	Source   string // CloudEvents source; with ID, the dedup identity
	Customer string
	Meter    string
	TimeNs   int64 // event time, UTC, ns since the epoch
	// value is the numeric value (SUM, MIN, MAX, AVG, LATEST) unless isInt:
	// then intValue holds it, an integer that fits int64, which windows add
	// and the decoder reads without building a decimal. Read it with Value.
	value    decimal.Decimal
	intValue int64
	isInt    bool
	Text     string // value as text (UNIQUE_COUNT)
	Dims     []Dim  // sorted by key, keys unique
	GroupKey string // canonical form of Dims, part of the window identity

	// Subscription marks a subscription event: from TimeNs on, Customer is
	// on Plan ("" when cancelled). It has no meter.
	Subscription bool
	Plan         string
	// Grant marks a grant.created event: from TimeNs on, Customer has the
	// event's value more units of Grant.Meter (see grant.go).
	Grant *GrantEvent
	// SLA marks an SLA event (probe, outage, issue; see sla.go).
	SLA *SLAEvent

	// Where the event was produced (where it was read, or its Origin when
	// it was re-keyed), kept for dead letters after decoding and LATEST.
	Partition PartitionID
	Offset    int64
	Raw       []byte

	meter *meterSpec
}

// Value is the event's numeric value.
func (ev *Event) Value() decimal.Decimal {
	if ev.isInt {
		return decimal.NewFromInt(ev.intValue)
	}
	return ev.value
}

// decimalOne is what a COUNT event adds. Decimals are immutable values, so
// one can be shared.
var decimalOne = decimal.NewFromInt(1)

// Units is what the event adds to its meter: its value, or 1 for a COUNT.
func (ev *Event) Units() decimal.Decimal {
	if ev.meter != nil && ev.meter.Aggregation == AggCount {
		return decimalOne
	}
	return ev.Value()
}

// Reason is why a record was dead-lettered. Reasons are a small closed set so
// that they can label metrics.
type Reason string

const (
	ReasonInvalidJSON  Reason = "invalid_json"
	ReasonInvalidField Reason = "invalid_field"
	ReasonMissingField Reason = "missing_field"
	ReasonUnknownMeter Reason = "unknown_meter"
	ReasonTimeRange    Reason = "time_out_of_range"
	ReasonLate         Reason = "late"
	ReasonTooLarge     Reason = "too_large"
	ReasonRating       Reason = "rating_error"
	ReasonCardinality  Reason = "cardinality"
	// ReasonNoSubscription: the customer has no plan at the record's time
	// and there is no default plan.
	ReasonNoSubscription Reason = "no_subscription"
	// ReasonUnpriced: the customer's plan does not price the meter.
	ReasonUnpriced Reason = "unpriced"
	// ReasonWrongPartition: the record arrived on another partition than
	// its customer's (see ownership).
	ReasonWrongPartition Reason = "wrong_partition"
)

// allReasons lists every Reason, so that metrics start at zero for each.
func allReasons() []Reason {
	return []Reason{ReasonInvalidJSON, ReasonInvalidField, ReasonMissingField, ReasonUnknownMeter, ReasonTimeRange,
		ReasonLate, ReasonTooLarge, ReasonRating, ReasonCardinality, ReasonNoSubscription, ReasonUnpriced, ReasonWrongPartition}
}

// DeadLetter is a record that could not be aggregated, with why. The original
// bytes are kept so that nothing is lost.
type DeadLetter struct {
	Reason    Reason
	Detail    string
	Topic     string
	Partition int32
	Offset    int64
	Raw       []byte
}

// RatedRow is one rated window: the unit of output. Its identity is
// (Tenant, Meter, Customer, GroupKey, WindowStart); Revision grows each time
// the window is emitted again, and consumers keep the highest revision.
type RatedRow struct {
	Tenant      string          `json:"tenant"`
	Meter       string          `json:"meter"`
	Customer    string          `json:"customer"`
	GroupKey    string          `json:"group_key"`
	WindowStart time.Time       `json:"window_start"`
	WindowEnd   time.Time       `json:"window_end"`
	Quantity    decimal.Decimal `json:"quantity"`
	Count       uint64          `json:"count"`
	Amount      decimal.Decimal `json:"amount"`
	Currency    string          `json:"currency"`
	UnitPrice   decimal.Decimal `json:"unit_price"`
	Revision    uint64          `json:"revision"`
	// Final is true when the window had closed (watermark past its end plus
	// grace) at emission; false for a provisional revision of an open window.
	Final bool `json:"final"`
	// Breakdown explains the charge: for SUM and COUNT windows, the billing
	// period's charge to date at this revision (tiers, units in each, unit
	// prices, allowance used); for period fee rows, the fee and true-up.
	Breakdown []rating.Line `json:"breakdown,omitempty"`
	// Plan is the plan that priced the row (a fee row prorated over plan
	// changes: the plan at the period's end; a credit: the plan whose
	// objective it is).
	Plan string `json:"plan,omitempty"`
	// QuantityDelta and AmountDelta are the change since the row's
	// previous revision (its whole values at revision 1), and Sign is 1 at
	// revision 1 and 0 after: summed over every revision delivered once,
	// they give the highest revisions' totals and the count of rows, which
	// is what additive rollups need. A fee or credit row's quantity (the
	// period's usage again, or a measurement) does not add up: its
	// QuantityDelta is 0.
	QuantityDelta decimal.Decimal `json:"quantity_delta"`
	AmountDelta   decimal.Decimal `json:"amount_delta"`
	Sign          int8            `json:"sign"`
}

// setDeltas sets r's deltas from the quantity and amount of its previous
// revision (ignored at revision 1); additive is false for rows whose
// quantity does not add up.
func (r *RatedRow) setDeltas(prevQuantity, prevAmount decimal.Decimal, additive bool) {
	if r.Revision <= 1 {
		prevQuantity, prevAmount, r.Sign = decimal.Zero, decimal.Zero, 1
	}
	r.AmountDelta = r.Amount.Sub(prevAmount)
	if additive {
		r.QuantityDelta = r.Quantity.Sub(prevQuantity)
	}
}

// Identity returns the row identity as one string, used as the Kafka key.
func (r *RatedRow) Identity() string {
	return string(r.AppendIdentity(make([]byte, 0, len(r.Tenant)+len(r.Meter)+len(r.Customer)+len(r.GroupKey)+24)))
}

// AppendIdentity appends the row identity (Identity) to b.
func (r *RatedRow) AppendIdentity(b []byte) []byte {
	b = append(append(b, r.Tenant...), '|')
	b = append(append(b, r.Meter...), '|')
	b = append(append(b, r.Customer...), '|')
	b = append(append(b, r.GroupKey...), '|')
	return r.WindowStart.UTC().AppendFormat(b, time.RFC3339)
}

// appendCanonicalGroupKey renders sorted dims as k=v pairs joined by ',',
// with '\', ',' and '=' escaped by '\' so that distinct dim sets never
// collide, appended to b.
func appendCanonicalGroupKey(b []byte, dims []Dim) []byte {
	for i, d := range dims {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEscaped(b, d.Key)
		b = append(b, '=')
		b = appendEscaped(b, d.Value)
	}
	return b
}

func appendEscaped(b []byte, s string) []byte {
	if !strings.ContainsAny(s, `\,=`) {
		return append(b, s...)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' || c == ',' || c == '=' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return b
}

// groupDim returns the value of dimension key in a canonical group key, or
// "" when it has none.
func groupDim(groupKey, key string) string {
	var k, v strings.Builder
	cur, escaped := &k, false
	for i := 0; i <= len(groupKey); i++ {
		if i == len(groupKey) || (!escaped && groupKey[i] == ',') {
			if k.String() == key {
				return v.String()
			}
			k.Reset()
			v.Reset()
			cur = &k
			continue
		}
		c := groupKey[i]
		switch {
		case escaped:
			cur.WriteByte(c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == '=' && cur == &k:
			cur = &v
		default:
			cur.WriteByte(c)
		}
	}
	return ""
}

// Dim returns the value of one of the event's dimensions.
func (ev *Event) Dim(key string) (string, bool) {
	i, ok := slices.BinarySearchFunc(ev.Dims, key, func(d Dim, k string) int { return strings.Compare(d.Key, k) })
	if !ok {
		return "", false
	}
	return ev.Dims[i].Value, true
}

// At is the event's time.
func (ev *Event) At() time.Time { return time.Unix(0, ev.TimeNs).UTC() }
