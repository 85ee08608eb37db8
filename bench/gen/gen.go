// Package gen generates synthetic telecom usage: voice calls (seconds, by
// destination), SMS (by destination) and mobile data sessions (bytes, by
// radio access technology) for a population of subscribers. It is used by
// `tally demo`, by tests and by benchmarks. It never imports the engine: the
// records it writes are plain JSON, as any producer would write them.
package gen

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/shopspring/decimal"
)

// Usage is one generated usage event, before encoding.
type Usage struct {
	ID       string
	Source   string // set for CloudEvents
	Customer string
	Meter    string
	Time     time.Time
	Value    decimal.Decimal
	Dims     map[string]string
}

// Meters are the meters the generator emits.
var Meters = []string{"voice_seconds", "sms", "data_bytes"}

var (
	destinations = []string{"domestic", "uk", "fr", "de", "us", "mobile"}
	rats         = []string{"4G", "5G"}
)

// Generator makes usage events. It is not safe for concurrent use.
type Generator struct {
	rng         *rand.Rand
	subscribers int
	prefix      string
	seq         uint64
	zipf        *rand.Zipf
	iotPercent  int
}

// Options shape a generator's stream; the zero value is the telecom mix
// with customers drawn uniformly.
type Options struct {
	// Zipf, when > 1, draws customers from a Zipf distribution with this
	// exponent: a few heavy users and a long tail, as in real traffic.
	Zipf float64
	// IoTPercent is the share of IoT telemetry records (meter iot_bytes,
	// by device type); the rest is the telecom mix.
	IoTPercent int
}

// IoTMeter is the meter of IoT telemetry records.
const IoTMeter = "iot_bytes"

var deviceTypes = []string{"meter", "tracker", "sensor", "camera"}

// New returns a generator with a deterministic stream for seed.
func New(seed uint64, subscribers int) *Generator {
	return NewWith(seed, subscribers, Options{})
}

// NewWith returns a generator shaped by o.
func NewWith(seed uint64, subscribers int, o Options) *Generator {
	g := &Generator{
		rng:         rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		subscribers: subscribers,
		prefix:      fmt.Sprintf("g%d", seed),
		iotPercent:  o.IoTPercent,
	}
	if o.Zipf > 1 && subscribers > 1 {
		g.zipf = rand.NewZipf(g.rng, o.Zipf, 1, uint64(subscribers-1))
	}
	return g
}

func (g *Generator) customer() int {
	if g.zipf != nil {
		return int(g.zipf.Uint64())
	}
	return g.rng.IntN(g.subscribers)
}

// Next returns a new event at time t.
func (g *Generator) Next(t time.Time) Usage {
	g.seq++
	u := Usage{
		ID:       fmt.Sprintf("%s-%d", g.prefix, g.seq),
		Customer: fmt.Sprintf("sub-%06d", g.customer()),
		Time:     t.UTC(),
	}
	if g.iotPercent > 0 && g.rng.IntN(100) < g.iotPercent {
		u.Meter = IoTMeter
		u.Value = decimal.NewFromInt(int64(20 + g.rng.IntN(2000)))
		u.Dims = map[string]string{"device": deviceTypes[g.rng.IntN(len(deviceTypes))]}
		return u
	}
	switch p := g.rng.IntN(100); {
	case p < 45:
		u.Meter = "voice_seconds"
		u.Value = decimal.NewFromInt(int64(1 + g.rng.IntN(600)))
		u.Dims = map[string]string{"destination": destinations[g.rng.IntN(len(destinations))]}
	case p < 70:
		u.Meter = "sms"
		u.Value = decimal.NewFromInt(1)
		u.Dims = map[string]string{"destination": destinations[g.rng.IntN(len(destinations))]}
	default:
		u.Meter = "data_bytes"
		u.Value = decimal.NewFromInt(int64(1000 + g.rng.IntN(50_000_000)))
		u.Dims = map[string]string{"rat": rats[g.rng.IntN(len(rats))]}
	}
	return u
}

// Intn returns a random number in [0, n) from the generator's stream.
func (g *Generator) Intn(n int) int { return g.rng.IntN(n) }

// PlainJSON encodes u in Tally's plain form.
func (u Usage) PlainJSON() []byte {
	b, _ := json.Marshal(map[string]any{
		"id": u.ID, "customer": u.Customer, "meter": u.Meter,
		"time": u.Time.Format(time.RFC3339Nano), "value": json.Number(u.Value.String()), "dims": u.Dims,
	})
	return b
}

// CloudEventJSON encodes u as a CloudEvent in structured mode: type is the
// meter, subject the customer, data holds value and the dimensions.
func (u Usage) CloudEventJSON() []byte {
	data := map[string]any{"value": json.Number(u.Value.String())}
	for k, v := range u.Dims {
		data[k] = v
	}
	source := u.Source
	if source == "" {
		source = "tally-gen"
	}
	b, _ := json.Marshal(map[string]any{
		"specversion": "1.0", "id": u.ID, "source": source, "type": u.Meter,
		"subject": u.Customer, "time": u.Time.Format(time.RFC3339Nano), "data": data,
	})
	return b
}

// Malformed returns a record that no decoder should accept, of a few kinds.
func (g *Generator) Malformed() []byte {
	switch g.rng.IntN(4) {
	case 0:
		return []byte(`{"id": "broken", "customer": `)
	case 1:
		return []byte(`{"id":"x1","customer":"sub-1","meter":"sms","time":"yesterday","value":1}`)
	case 2:
		return []byte(`{"id":"x2","customer":"sub-1","meter":"teleportation","time":"2026-01-01T00:00:00Z","value":1}`)
	default:
		return []byte(`{"id":"x3","customer":"sub-1","meter":"sms","time":"2026-01-01T00:00:00Z","value":"NaN"}`)
	}
}
