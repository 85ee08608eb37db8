package engine

import "slices"

// names numbers the customers and group keys of one shard's windows, so
// that a window's key is a few ids (windowKey: 24 bytes, hashed without
// strings) and the windows of a customer share one copy of its name. It
// belongs to the shard's goroutine.
//
// Invariants:
//   - id 0 is "", the group key of periods and of ungrouped meters; it is
//     never freed;
//   - every window and period in the window table holds one reference on
//     its customer's id and one on its group key's (see indexWindow,
//     indexPeriod, unindex), so an id in a key in memory names its string;
//   - an id no window holds is freed at the next barrier's end (sweep), not
//     at once: a window that leaves memory during a barrier keeps its names
//     until the barrier has encoded it, and a key built for a record that
//     was then dead-lettered costs nothing past the barrier.
type names struct {
	ids  map[string]uint32
	strs []string // by id; "" once freed (and for id 0)
	refs []uint32
	free []uint32
	// unheld lists the ids whose references fell to 0, or that were
	// numbered without one, since the last sweep. An id may be listed more
	// than once; sweep frees it once.
	unheld []uint32
}

func newNames() *names {
	return &names{ids: map[string]uint32{"": 0}, strs: []string{""}, refs: []uint32{0}}
}

// id returns the id of str, numbering it if it has none.
func (n *names) id(str string) uint32 {
	if id, ok := n.ids[str]; ok {
		return id
	}
	var id uint32
	if k := len(n.free); k > 0 {
		id = n.free[k-1]
		n.free = n.free[:k-1]
		n.strs[id] = str
	} else {
		id = uint32(len(n.strs))
		n.strs = append(n.strs, str)
		n.refs = append(n.refs, 0)
	}
	n.ids[str] = id
	n.unheld = append(n.unheld, id)
	return id
}

// find returns the id of str, without numbering it.
func (n *names) find(str string) (uint32, bool) {
	id, ok := n.ids[str]
	return id, ok
}

// str returns the string of id.
func (n *names) str(id uint32) string { return n.strs[id] }

func (n *names) hold(id uint32) { n.refs[id]++ }

func (n *names) release(id uint32) {
	if n.refs[id]--; n.refs[id] == 0 {
		n.unheld = append(n.unheld, id)
	}
}

// sweep frees the ids that no window holds.
func (n *names) sweep() {
	for _, id := range n.unheld {
		if id == 0 || n.refs[id] > 0 || n.strs[id] == "" {
			continue // held again, or already freed
		}
		delete(n.ids, n.strs[id])
		n.strs[id] = ""
		n.free = append(n.free, id)
	}
	n.unheld = n.unheld[:0]
}

// len is the number of strings numbered (without "").
func (n *names) len() int { return len(n.ids) - 1 }

// reserve makes room for n more names, so that numbering them does not
// grow the table again and again (recovery numbers a shard's names all at
// once).
func (n *names) reserve(more int) {
	n.ids = grown(n.ids, more)
	n.strs = slices.Grow(n.strs, more)
	n.refs = slices.Grow(n.refs, more)
}
