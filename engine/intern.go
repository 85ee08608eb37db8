package engine

// Interner hands out one string per distinct text: a reader decoding a
// partition sees the same customers, dimensions and group keys over and
// over, and windows keyed by them then share one copy instead of holding a
// string per record. It belongs to one goroutine.
//
// It is bounded: past maxInterned texts it starts afresh (the strings it
// handed out stay valid; later ones are copies again until seen twice).
type Interner struct {
	m   map[string]string
	buf []byte // scratch for texts built before they are looked up
}

const maxInterned = 1 << 20

// NewInterner returns an empty interner.
func NewInterner() *Interner { return &Interner{m: make(map[string]string)} }

// bytes returns b as an interned string; without an interner, a copy.
func (in *Interner) bytes(b []byte) string {
	if in == nil {
		return string(b)
	}
	if s, ok := in.m[string(b)]; ok { // no allocation for the lookup
		return s
	}
	if len(in.m) >= maxInterned {
		clear(in.m)
	}
	s := string(b)
	in.m[s] = s
	return s
}
