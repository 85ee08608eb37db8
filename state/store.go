// Package state is Tally's durable store: a Pebble database holding, under one
// key layout, the aggregator state, the dedup horizon, source offsets, the
// outbox of rows not yet delivered and each sink's delivery progress.
//
// Everything a checkpoint changes is written by Commit in ONE Pebble batch
// with pebble.Sync, so after a crash the store holds exactly the state of the
// last completed checkpoint: never part of one.
//
// Key layout (all integers big-endian so that keys sort numerically):
//
//	m/format                               format marker, written on creation
//	c/seq                                  last committed checkpoint sequence
//	c/watermark                            engine watermark at that checkpoint (ns)
//	c/gone                                 how far deletions reached (Gone): 3 x 8
//	c/changelog                            changelog offset applied (a task's, local)
//	c/name                                 the node's name, with where it was made (node store, local)
//	c/t<stream:1>                          outbox trim position: seq:8 index:4
//	p/<topic>\x00<partition:4>             next offset:8, max event time ns:8
//	t/<topic>, n/<topic>                   topic ID, partition count when state began
//	u/<customer>                           subscription changes from events
//	g/<customer>\x00<meter>                 prepaid grant balance (grant.created events, draw-down)
//	v/<customer>\x00<period start BE>       SLA measurements of a billing period, credits emitted
//	y/<service>\x00<kind><key>              a shared service's SLA probes (p<quarter hour BE>) and outages (o<ref>)
//	l/<seq:8><i>                           delta log chunk (delta.go)
//	w/<period end ns:8><window key>        window aggregate (engine encoding), by
//	                                       the end of its billing period so that
//	                                       finalized periods go in one range delete
//	e/<bucket ns:8><id hash[0]:1><seq:8>   the dedup ids one checkpoint added to a
//	                                       bucket whose hashes begin with that byte;
//	                                       value: (id hash:16, routing hash:8)...
//	                                       sorted by id hash
//	d/<bucket ns:8><id hash:16>            (before 2026-11-25: one key per dedup id;
//	                                       moved to e/ when the store opens)
//	q/<stream:1><seq:8><first index:4>     outbox chunk of entries (outbox.go)
//	o/<stream:1><seq:8><index:4>           (older: one outbox entry per key, still read)
//	s/<sink name>                          sink's next outbox position: seq:8 index:4
//
// The engine owns the encoding of window and outbox values; this package
// treats them as opaque bytes.
package state

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// formatMarker identifies a Tally state folder and its layout version. A
// folder holding a Pebble database without it is foreign and refused.
// v2 added the delta log (delta.go), v3 the packed outbox (outbox.go), v4
// sealed chunks (chunk.go), v5 window values of version 4 (the engine's
// announced entitlement shares) and the provisioning outbox stream. An
// older folder is read as it is (no log, one key per outbox entry, plain
// chunks) and marked v5 at open, so that an older Tally refuses it with
// ErrForeign rather than misreading it.
const formatMarker = "tally-state-v5"

// olderFormats are the markers an open upgrades.
var olderFormats = []string{"tally-state-v1", "tally-state-v2", "tally-state-v3", "tally-state-v4"}

var (
	keyFormat = []byte("m/format")
	keySeq    = []byte("c/seq")
	keyWM     = []byte("c/watermark")
	keyGone   = []byte("c/gone")
	// keyChangelog is the changelog offset a task's store has applied up
	// to; it is local (never itself published).
	keyChangelog = []byte("c/changelog")
	// keyNodeName is the name of the node whose store this is (a Node's
	// own store, never a task's; cmd/tally nodeName); local, never
	// published.
	keyNodeName = []byte("c/name")

	prefixPartition = []byte("p/")
	prefixWindow    = []byte("w/")
	// prefixDedup holds dedup ids packed per checkpoint, bucket and first
	// byte of the hash; prefixDedupV1 one id per key, as older versions
	// wrote them (migrated at open).
	prefixDedup   = []byte("e/")
	prefixDedupV1 = []byte("d/")
	prefixOutbox  = []byte("o/")
	prefixSink    = []byte("s/")
	// prefixSubscription holds each customer's subscription changes read
	// from subscription events.
	prefixSubscription = []byte("u/")
	// prefixGrant holds each customer's prepaid grants of a meter (key:
	// customer NUL meter).
	prefixGrant = []byte("g/")
	// prefixSLA holds each customer's SLA measurements of a billing period
	// (key: customer NUL period start, 8 bytes big-endian).
	prefixSLA = []byte("v/")
	// prefixSLAService holds shared services' SLA probes and outages (key:
	// service NUL kind and key, the engine's encoding).
	prefixSLAService = []byte("y/")
	// prefixTopic holds each source topic's identity (its Kafka topic ID)
	// when its offsets were first checkpointed.
	prefixTopic = []byte("t/")
	// prefixPartitionCount holds each source topic's partition count when
	// its state began: producers placed customers by it.
	prefixPartitionCount = []byte("n/")
)

// Stream names an outbox stream: the kind of entries delivered together.
type Stream byte

const (
	// StreamRated holds rated usage rows.
	StreamRated Stream = 'r'
	// StreamDeadLetter holds records that could not be aggregated.
	StreamDeadLetter Stream = 'x'
	// StreamProvisioning holds provisioning actions.
	StreamProvisioning Stream = 'p'
)

// ErrForeign is returned by Open for a folder that is not a Tally state folder.
var ErrForeign = errors.New("not a Tally state folder")

// Store is the Pebble-backed state. Its methods are safe for concurrent use;
// Commit calls must come from one goroutine (the checkpoint writer) so that
// sequences are committed in order.
type Store struct {
	db   *pebble.DB
	lock *pebble.Lock // the folder's lock, released after db closes
}

// Open opens or creates the state folder dir. A folder that holds files but
// no Tally marker, or a marker of another version, is refused with an error:
// state is never silently reset.
func Open(dir string) (*Store, error) { return openFS(dir, vfs.Default) }

// openFS is Open on a file system; tests inject write errors through it.
func openFS(dir string, fs vfs.FS) (*Store, error) {
	entries, err := fs.List(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("state: read folder %s: %w", dir, err)
	}
	// Fresh: empty, or holding only the lock file a start that crashed
	// right after taking it left behind.
	fresh := len(entries) == 0 || (len(entries) == 1 && entries[0] == "LOCK")
	// Or a creation a crash interrupted: see creatingFile.
	interrupted := slices.Contains(entries, creatingFile)
	if !fresh && !interrupted {
		desc, err := pebble.Peek(dir, fs)
		if err != nil {
			return nil, fmt.Errorf("state: inspect %s: %w", dir, err)
		}
		if !desc.Exists {
			return nil, fmt.Errorf("state: %s holds files but no Pebble database: %w; point --state-dir at an empty or Tally folder", dir, ErrForeign)
		}
	}
	// A 64 MB memtable (Pebble's default is 4 MB): checkpoints write every
	// new dedup id and dirty window, and most of them are overwritten or
	// range-deleted within minutes; a larger memtable flushes, and so
	// compacts, far less of that churn (see bench/RESULTS.md).
	opts := &pebble.Options{Logger: quietLogger{}, FS: fs, MemTableSize: 64 << 20}
	// Bloom filters (10 bits per key, ~1% false positives, kept in the block
	// cache) make most Gets for absent keys — the usual answer when a late
	// record's id is looked up — cost no data-block read.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	// The lock first, so that a folder in use is told apart from a damaged
	// one: the advice differs.
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("state: create %s: %w", dir, err)
	}
	lock, err := pebble.LockDirectory(dir, fs)
	if err != nil {
		return nil, fmt.Errorf("state: %s is in use by another process (%w): another Tally is running on it; stop it first, "+
			"or give this one its own stateDir. Do not start on a copy or an empty folder to get past this: %s", dir, err, emptyFolderRisk)
	}
	opts.Lock = lock
	if interrupted {
		if fresh, err = clearInterrupted(fs, dir); err != nil {
			lock.Close()
			return nil, err
		}
	}
	if fresh {
		if err := markCreating(fs, dir); err != nil {
			lock.Close()
			return nil, err
		}
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("state: open pebble at %s: %w; the folder is damaged or not Tally's: restore it from a backup of the folder (Tally never resets state by itself). %s", dir, err, emptyFolderRisk)
	}
	s := &Store{db: db, lock: lock}
	marker, closer, err := db.Get(keyFormat)
	switch {
	case errors.Is(err, pebble.ErrNotFound) && (fresh || s.empty()):
		// A new folder, or one whose creation a crash interrupted before
		// the marker was written (Pebble's files, no key): nothing in it
		// can be lost by taking it.
		if err := db.Set(keyFormat, []byte(formatMarker), pebble.Sync); err != nil {
			s.Close()
			return nil, fmt.Errorf("state: write format marker: %w", err)
		}
	case errors.Is(err, pebble.ErrNotFound):
		s.Close()
		return nil, fmt.Errorf("state: %s is a Pebble database without a Tally marker: %w", dir, ErrForeign)
	case err != nil:
		s.Close()
		return nil, fmt.Errorf("state: read format marker: %w", err)
	default:
		got := string(marker)
		closer.Close()
		if slices.Contains(olderFormats, got) {
			if err := db.Set(keyFormat, []byte(formatMarker), pebble.Sync); err != nil {
				s.Close()
				return nil, fmt.Errorf("state: upgrade format marker: %w", err)
			}
			got = formatMarker
		}
		if got != formatMarker {
			s.Close()
			return nil, fmt.Errorf("state: %s has format %q, this Tally reads %q: %w", dir, got, formatMarker, ErrForeign)
		}
	}
	if err := s.migrateDedup(migrateBatchBytes); err != nil {
		s.Close()
		return nil, err
	}
	// The marker is synced: the folder is a Tally folder from now on. A
	// crash before this removal leaves the file, which the next open
	// removes again.
	if err := fs.Remove(fs.PathJoin(dir, creatingFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.Close()
		return nil, fmt.Errorf("state: remove %s: %w", creatingFile, err)
	}
	return s, nil
}

// creatingFile is written, synced, into a fresh folder before Pebble creates
// its files in it, and removed once the Tally marker is synced. A crash in
// between (SIGKILL while Pebble writes its first manifest) leaves Pebble's
// half-made files and this one: the next open knows the folder for its own
// interrupted creation, clears it and creates it again, where a folder of
// unknown files without it is refused. Nothing can be lost by clearing it:
// no checkpoint is ever written before the marker.
const creatingFile = "TALLY-CREATING"

func markCreating(fs vfs.FS, dir string) error {
	f, err := fs.Create(fs.PathJoin(dir, creatingFile), vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("state: create %s: %w", creatingFile, err)
	}
	if err := errors.Join(f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("state: sync %s: %w", creatingFile, err)
	}
	d, err := fs.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("state: open %s to sync it: %w", dir, err)
	}
	if err := errors.Join(d.Sync(), d.Close()); err != nil {
		return fmt.Errorf("state: sync %s: %w", dir, err)
	}
	return nil
}

// clearInterrupted removes what an interrupted creation left in dir
// (holding its lock), unless Pebble finished creating its database there
// (then Open goes on as for any folder: a database without a key is taken,
// see the marker check). It reports whether dir is fresh again.
func clearInterrupted(fs vfs.FS, dir string) (bool, error) {
	desc, err := pebble.Peek(dir, fs)
	if err != nil {
		return false, fmt.Errorf("state: inspect %s: %w", dir, err)
	}
	if desc.Exists {
		return false, nil
	}
	entries, err := fs.List(dir)
	if err != nil {
		return false, fmt.Errorf("state: read folder %s: %w", dir, err)
	}
	for _, e := range entries {
		if e == "LOCK" || e == creatingFile {
			continue
		}
		if err := fs.RemoveAll(fs.PathJoin(dir, e)); err != nil {
			return false, fmt.Errorf("state: clear the interrupted creation of %s: %w", dir, err)
		}
	}
	return true, nil
}

// quietLogger drops Pebble's informational messages (WAL recovery, etc.) and
// keeps errors on stderr; fatal ones end the process as Pebble expects.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: "+format+"\n", args...)
}

// Fatalf is how Pebble reports a write it could not make durable (disk
// full, I/O error): the process stops at once, before the checkpoint is
// published, so nothing that was not persisted is acknowledged to sources
// or sinks; a restart resumes from the last durable checkpoint.
func (quietLogger) Fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pebble: fatal: "+format+"\n", args...)
	fmt.Fprintln(os.Stderr, "tally: the state store cannot persist (see above); stopping before anything unpersisted is acknowledged. "+
		"Fix the disk (free space on the state folder) and restart: Tally resumes from its last durable checkpoint.")
	os.Exit(3)
}

// Close closes the database.
func (s *Store) Close() error {
	err := s.db.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

// emptyFolderRisk is what starting over costs, for errors that might tempt
// an operator to do it.
const emptyFolderRisk = "An empty folder re-reads every partition from its earliest offset and numbers every row's revisions from 1 again, " +
	"below the revisions ClickHouse and the rated topic already hold, so their consumers would keep the old rows: " +
	"start from an empty folder only after deleting the tenant's rows from every sink (or with a new tenant)"

// PartitionProgress is the durable position of one source partition.
type PartitionProgress struct {
	Topic          string
	Partition      int32
	NextOffset     int64 // first offset not yet reflected in state
	MaxEventTimeNs int64 // highest event time seen, for the watermark
}

// KV is one key and value; the key is relative to its prefix.
type KV struct {
	Key, Value []byte
}

// DedupEntry is one remembered event id.
type DedupEntry struct {
	BucketNs    int64
	IDHash      [16]byte
	RoutingHash uint64
}

// Gone bounds the state that deletions may have removed: windows ending at
// or before WindowEndNs, windows and periods settling at or before
// SettleNs, dedup buckets starting before DedupBucketNs. The engine keeps
// each only growing; after a restart with longer horizons it refuses
// records whose state may be gone, rather than start it afresh.
type Gone struct {
	WindowEndNs, SettleNs, DedupBucketNs int64
}

// Checkpoint is everything one checkpoint changes. Commit writes it atomically.
type Checkpoint struct {
	Seq uint64
	// WatermarkNs, when set (HasWatermark), is the engine watermark of the cut.
	WatermarkNs  int64
	HasWatermark bool
	// Gone, when set, records how far the deletions of this checkpoint and
	// every earlier one reached (see Gone).
	Gone       *Gone
	Partitions []PartitionProgress
	// DeltaChunks are the delta log's chunks of this checkpoint (see
	// delta.go), each a list of AppendDeltaEntry entries; DeltaBase marks
	// them as a base, which replaces every older chunk.
	DeltaChunks [][]byte
	DeltaBase   bool
	// WindowPuts write windows to their own keys (merged as they leave
	// memory), WindowDeletes delete such keys.
	WindowPuts    []KV
	WindowDeletes [][]byte
	// SubscriptionPuts replace customers' subscription histories (key: the
	// customer).
	SubscriptionPuts []KV
	// GrantPuts replace customers' grant balances (key: customer NUL meter).
	GrantPuts []KV
	// SLAPuts replace, SLADeletes delete, customers' SLA measurements of a
	// billing period (key: customer NUL start).
	SLAPuts    []KV
	SLADeletes [][]byte
	// ServicePuts replace, ServiceDeletes delete, shared services' SLA
	// probes and outages.
	ServicePuts    []KV
	ServiceDeletes [][]byte
	DedupAdds      []DedupEntry
	// DedupExpireBeforeNs, when > 0, removes every dedup bucket that starts
	// before it, as one range delete.
	DedupExpireBeforeNs int64
	// WindowsFinalizedBeforeNs, when > 0, removes every window whose key
	// starts with a period end before it, as one range delete.
	WindowsFinalizedBeforeNs int64
	// Outbox entries, in delivery order per stream.
	Outbox map[Stream][][]byte
	// SinkProgress records, per sink, the next outbox position it delivers.
	SinkProgress map[string]OutboxPos
	// OutboxTrim removes, per stream, every entry before the position: all
	// sinks of the stream have delivered them.
	OutboxTrim map[Stream]OutboxPos
	// TopicIDs records source topics' identities (topic -> ID).
	TopicIDs map[string]string
	// PartitionCounts records source topics' partition counts.
	PartitionCounts map[string]int32
}

// OutboxPos is a position in an outbox stream: entry Index of checkpoint Seq.
type OutboxPos struct {
	Seq   uint64
	Index uint32
}

// Less orders positions.
func (p OutboxPos) Less(q OutboxPos) bool {
	return p.Seq < q.Seq || (p.Seq == q.Seq && p.Index < q.Index)
}

// Commit writes cp in one batch and syncs it. Sequences must grow. It sorts
// cp.WindowPuts and cp.DedupAdds in place.
func (s *Store) Commit(cp *Checkpoint) error {
	return s.CommitPublished(cp, nil)
}

// CommitPublished is Commit for a store that is the cache of a changelog:
// publish, when not nil, gets every change cp makes, in order, and must
// make them durable elsewhere first (a Kafka transaction); the batch is
// committed only if it returns nil, with the changelog position it
// returns. Invariant: the store is never ahead of its changelog.
func (s *Store) CommitPublished(cp *Checkpoint, publish func(ops []Op) (position int64, err error)) error {
	b := &recordingBatch{Batch: s.db.NewBatch(), record: publish != nil, db: s.db}
	defer b.Close()
	var scratch []byte
	for _, p := range cp.Partitions {
		v := binary.BigEndian.AppendUint64(nil, uint64(p.NextOffset))
		v = binary.BigEndian.AppendUint64(v, uint64(p.MaxEventTimeNs))
		if err := b.Set(partitionKey(p.Topic, p.Partition), v, nil); err != nil {
			return fmt.Errorf("state: batch partition: %w", err)
		}
	}
	if err := writeDeltas(b, cp); err != nil {
		return err
	}
	// In key order: the memtable's skiplist inserter starts each search
	// where the previous insert ended, so sorted puts cost less than the
	// shards' order, which is random (BenchmarkCheckpointStream, 50K dirty
	// windows: 199-220 -> 172-180 CPU ms a checkpoint).
	slices.SortFunc(cp.WindowPuts, func(a, b KV) int { return bytes.Compare(a.Key, b.Key) })
	for _, kv := range cp.WindowPuts {
		scratch = append(append(scratch[:0], prefixWindow...), kv.Key...)
		if err := b.Set(scratch, kv.Value, nil); err != nil {
			return fmt.Errorf("state: batch window: %w", err)
		}
	}
	for _, k := range cp.WindowDeletes {
		scratch = append(append(scratch[:0], prefixWindow...), k...)
		if err := b.Delete(scratch, nil); err != nil {
			return fmt.Errorf("state: batch window delete: %w", err)
		}
	}
	for _, kv := range cp.SubscriptionPuts {
		scratch = append(append(scratch[:0], prefixSubscription...), kv.Key...)
		if err := b.Set(scratch, kv.Value, nil); err != nil {
			return fmt.Errorf("state: batch subscription: %w", err)
		}
	}
	for _, kv := range cp.GrantPuts {
		scratch = append(append(scratch[:0], prefixGrant...), kv.Key...)
		if err := b.Set(scratch, kv.Value, nil); err != nil {
			return fmt.Errorf("state: batch grant: %w", err)
		}
	}
	for _, kv := range cp.SLAPuts {
		scratch = append(append(scratch[:0], prefixSLA...), kv.Key...)
		if err := b.Set(scratch, kv.Value, nil); err != nil {
			return fmt.Errorf("state: batch SLA period: %w", err)
		}
	}
	for _, k := range cp.SLADeletes {
		scratch = append(append(scratch[:0], prefixSLA...), k...)
		if err := b.Delete(scratch, nil); err != nil {
			return fmt.Errorf("state: batch SLA period delete: %w", err)
		}
	}
	for _, kv := range cp.ServicePuts {
		scratch = append(append(scratch[:0], prefixSLAService...), kv.Key...)
		if err := b.Set(scratch, kv.Value, nil); err != nil {
			return fmt.Errorf("state: batch SLA service: %w", err)
		}
	}
	for _, k := range cp.ServiceDeletes {
		scratch = append(append(scratch[:0], prefixSLAService...), k...)
		if err := b.Delete(scratch, nil); err != nil {
			return fmt.Errorf("state: batch SLA service delete: %w", err)
		}
	}
	if err := setDedup(b, cp.Seq, cp.DedupAdds); err != nil {
		return err
	}
	if cp.WindowsFinalizedBeforeNs > 0 {
		end := binary.BigEndian.AppendUint64(append([]byte(nil), prefixWindow...), uint64(cp.WindowsFinalizedBeforeNs))
		if err := b.DeleteRange(prefixWindow, end, nil); err != nil {
			return fmt.Errorf("state: batch window finalization: %w", err)
		}
	}
	if cp.DedupExpireBeforeNs > 0 {
		if err := b.DeleteRange(prefixDedup, dedupPrefix(cp.DedupExpireBeforeNs), nil); err != nil {
			return fmt.Errorf("state: batch dedup expiry: %w", err)
		}
	}
	if err := writeOutbox(b, cp); err != nil {
		return err
	}
	for name, pos := range cp.SinkProgress {
		if err := b.Set(sinkKey(name), encodePos(pos), nil); err != nil {
			return fmt.Errorf("state: batch sink progress: %w", err)
		}
	}
	for topic, id := range cp.TopicIDs {
		if err := b.Set(append(append([]byte(nil), prefixTopic...), topic...), []byte(id), nil); err != nil {
			return fmt.Errorf("state: batch topic id: %w", err)
		}
	}
	for topic, n := range cp.PartitionCounts {
		k := append(append([]byte(nil), prefixPartitionCount...), topic...)
		if err := b.Set(k, binary.BigEndian.AppendUint32(nil, uint32(n)), nil); err != nil {
			return fmt.Errorf("state: batch partition count: %w", err)
		}
	}
	if err := s.trimOutbox(b, cp.OutboxTrim); err != nil {
		return err
	}
	if cp.HasWatermark {
		if err := b.Set(keyWM, binary.BigEndian.AppendUint64(nil, uint64(cp.WatermarkNs)), nil); err != nil {
			return fmt.Errorf("state: batch watermark: %w", err)
		}
	}
	if g := cp.Gone; g != nil {
		v := binary.BigEndian.AppendUint64(nil, uint64(g.WindowEndNs))
		v = binary.BigEndian.AppendUint64(v, uint64(g.SettleNs))
		v = binary.BigEndian.AppendUint64(v, uint64(g.DedupBucketNs))
		if err := b.Set(keyGone, v, nil); err != nil {
			return fmt.Errorf("state: batch deletion bounds: %w", err)
		}
	}
	if err := b.Set(keySeq, binary.BigEndian.AppendUint64(nil, cp.Seq), nil); err != nil {
		return fmt.Errorf("state: batch seq: %w", err)
	}
	if publish != nil {
		position, err := publish(b.ops)
		if err != nil {
			return fmt.Errorf("state: publish checkpoint %d: %w", cp.Seq, err)
		}
		if err := b.Batch.Set(keyChangelog, binary.BigEndian.AppendUint64(nil, uint64(position)), nil); err != nil {
			return fmt.Errorf("state: batch changelog position: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: commit checkpoint %d: %w", cp.Seq, err)
	}
	return nil
}

// OpKind is the kind of a change to the store.
type OpKind byte

// Kinds of changes.
const (
	OpSet         OpKind = 's'
	OpDelete      OpKind = 'd'
	OpDeleteRange OpKind = 'r' // Key..Value, Value excluded
)

// Op is one change a checkpoint makes to the store, as its changelog
// carries it.
type Op struct {
	Kind       OpKind
	Key, Value []byte
	// record, when set, is Kind followed by Value in one buffer (Value is
	// its tail): Record's answer without a copy.
	record []byte
}

// Record is op's changelog record value: none for a delete (a tombstone,
// so that compaction can drop the key), else the kind followed by the
// value (a set's value, a range delete's end key).
func (op Op) Record() []byte {
	switch {
	case op.Kind == OpDelete:
		return nil
	case op.record != nil:
		return op.record
	}
	return append([]byte{byte(op.Kind)}, op.Value...)
}

// OpFromRecord reads back a change from its changelog record.
func OpFromRecord(key, value []byte) (Op, error) {
	if len(value) == 0 {
		return Op{Kind: OpDelete, Key: key}, nil
	}
	switch k := OpKind(value[0]); k {
	case OpSet, OpDeleteRange:
		return Op{Kind: k, Key: key, Value: value[1:]}, nil
	}
	return Op{}, fmt.Errorf("changelog record %q: unknown change kind %q", key, value[0])
}

// recordingBatch is a batch that also lists its changes when record is set.
type recordingBatch struct {
	*pebble.Batch
	record bool
	ops    []Op
	db     *pebble.DB
}

func (b *recordingBatch) Set(k, v []byte, o *pebble.WriteOptions) error {
	if b.record {
		// One copy of the value, already in its changelog record's form.
		rec := make([]byte, 1+len(v))
		rec[0] = byte(OpSet)
		copy(rec[1:], v)
		b.ops = append(b.ops, Op{Kind: OpSet, Key: bytes.Clone(k), Value: rec[1:], record: rec})
	}
	return b.Batch.Set(k, v, o)
}

func (b *recordingBatch) Delete(k []byte, o *pebble.WriteOptions) error {
	if b.record {
		b.ops = append(b.ops, Op{Kind: OpDelete, Key: bytes.Clone(k)})
	}
	return b.Batch.Delete(k, o)
}

// DeleteRange also lists a tombstone for every key the range removes (in
// the store, or set earlier in the batch): a compacted changelog keeps the
// latest record per key, so without them the keys a range delete removed
// (delivered outbox entries, expired dedup ids, finalized periods) would
// stay in it forever. The range record follows them, so a restore from an
// uncompacted changelog removes the same.
func (b *recordingBatch) DeleteRange(start, end []byte, o *pebble.WriteOptions) error {
	if b.record {
		n := len(b.ops)
		for i := range n {
			if op := b.ops[i]; op.Kind == OpSet && bytes.Compare(op.Key, start) >= 0 && bytes.Compare(op.Key, end) < 0 {
				b.ops = append(b.ops, Op{Kind: OpDelete, Key: op.Key})
			}
		}
		it, err := b.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: end})
		if err != nil {
			return fmt.Errorf("state: list a range delete's keys: %w", err)
		}
		for it.First(); it.Valid(); it.Next() {
			b.ops = append(b.ops, Op{Kind: OpDelete, Key: bytes.Clone(it.Key())})
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("state: list a range delete's keys: %w", err)
		}
		b.ops = append(b.ops, Op{Kind: OpDeleteRange, Key: bytes.Clone(start), Value: bytes.Clone(end)})
	}
	return b.Batch.DeleteRange(start, end, o)
}

// batchWriter is what setDedup writes to.
type batchWriter interface {
	Set(k, v []byte, o *pebble.WriteOptions) error
}

// ChangelogPosition returns the changelog offset the store has applied up
// to (exclusive); ok is false if it never followed a changelog.
func (s *Store) ChangelogPosition() (position int64, ok bool, err error) {
	v, ok, err := s.lookupUint64(keyChangelog, "changelog position")
	return int64(v), ok, err
}

// Apply applies changes read from the changelog, up to position
// (exclusive), in one synced batch: the restore of a task.
func (s *Store) Apply(ops []Op, position int64) error {
	b := s.db.NewBatch()
	defer b.Close()
	for _, op := range ops {
		var err error
		switch op.Kind {
		case OpSet:
			err = b.Set(op.Key, op.Value, nil)
		case OpDelete:
			err = b.Delete(op.Key, nil)
		case OpDeleteRange:
			err = b.DeleteRange(op.Key, op.Value, nil)
		default:
			err = fmt.Errorf("unknown change kind %q", op.Kind)
		}
		if err != nil {
			return fmt.Errorf("state: apply changelog: %w", err)
		}
	}
	if err := b.Set(keyChangelog, binary.BigEndian.AppendUint64(nil, uint64(position)), nil); err != nil {
		return fmt.Errorf("state: apply changelog: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: apply changelog: %w", err)
	}
	return nil
}

// NodeName returns the name SetNodeName stored; ok is false if none was.
func (s *Store) NodeName() (name string, ok bool, err error) {
	v, closer, err := s.db.Get(keyNodeName)
	if errors.Is(err, pebble.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("state: read node name: %w", err)
	}
	defer closer.Close()
	return string(v), true, nil
}

// SetNodeName stores name, synced.
func (s *Store) SetNodeName(name string) error {
	if err := s.db.Set(keyNodeName, []byte(name), pebble.Sync); err != nil {
		return fmt.Errorf("state: store node name: %w", err)
	}
	return nil
}

// LastSeq returns the sequence of the last committed checkpoint, 0 if none.
func (s *Store) LastSeq() (uint64, error) {
	return s.getUint64(keySeq)
}

// Watermark returns the engine watermark of the last checkpoint that set
// one; ok is false if none did.
func (s *Store) Watermark() (wm int64, ok bool, err error) {
	v, ok, err := s.lookupUint64(keyWM, "watermark")
	return int64(v), ok, err
}

// Gone returns the deletion bounds of the last checkpoint that recorded
// them; ok is false if none did (a folder of an older version, or a fresh
// one).
func (s *Store) Gone() (g Gone, ok bool, err error) {
	raw, closer, err := s.db.Get(keyGone)
	if errors.Is(err, pebble.ErrNotFound) {
		return Gone{}, false, nil
	}
	if err != nil {
		return Gone{}, false, fmt.Errorf("state: get deletion bounds: %w", err)
	}
	defer closer.Close()
	if len(raw) != 24 {
		return Gone{}, false, fmt.Errorf("state: deletion bounds hold %d bytes, want 24: state is corrupt", len(raw))
	}
	return Gone{WindowEndNs: int64(binary.BigEndian.Uint64(raw)), SettleNs: int64(binary.BigEndian.Uint64(raw[8:])),
		DedupBucketNs: int64(binary.BigEndian.Uint64(raw[16:]))}, true, nil
}

// SinkProgress returns the next outbox position of sink; the zero position
// (deliver everything) if the sink never recorded progress.
func (s *Store) SinkProgress(sink string) (OutboxPos, error) {
	return s.getPos(sinkKey(sink), "progress of sink "+sink)
}

func (s *Store) getUint64(key []byte) (uint64, error) {
	v, _, err := s.lookupUint64(key, fmt.Sprintf("key %q", key))
	return v, err
}

// lookupUint64 reads an 8-byte value, named what in errors; ok is false
// when the key is absent.
func (s *Store) lookupUint64(key []byte, what string) (v uint64, ok bool, err error) {
	raw, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("state: get %s: %w", what, err)
	}
	defer closer.Close()
	if len(raw) != 8 {
		return 0, false, fmt.Errorf("state: %s holds %d bytes, want 8: state is corrupt", what, len(raw))
	}
	return binary.BigEndian.Uint64(raw), true, nil
}

// Partitions returns the progress of every partition in the store.
func (s *Store) Partitions() ([]PartitionProgress, error) {
	var out []PartitionProgress
	err := s.scan(prefixPartition, func(k, v []byte) error {
		i := bytes.IndexByte(k, 0)
		if i < 0 || len(k) != i+5 || len(v) != 16 {
			return fmt.Errorf("state: malformed partition entry %q: state is corrupt", k)
		}
		out = append(out, PartitionProgress{
			Topic:          string(k[:i]),
			Partition:      int32(binary.BigEndian.Uint32(k[i+1:])),
			NextOffset:     int64(binary.BigEndian.Uint64(v)),
			MaxEventTimeNs: int64(binary.BigEndian.Uint64(v[8:])),
		})
		return nil
	})
	return out, err
}

// TopicIDs returns the identity recorded for each source topic.
func (s *Store) TopicIDs() (map[string]string, error) {
	out := make(map[string]string)
	err := s.scan(prefixTopic, func(k, v []byte) error {
		out[string(k)] = string(v)
		return nil
	})
	return out, err
}

// PartitionCounts returns the partition count recorded for each source
// topic.
func (s *Store) PartitionCounts() (map[string]int32, error) {
	out := make(map[string]int32)
	err := s.scan(prefixPartitionCount, func(k, v []byte) error {
		if len(v) != 4 {
			return fmt.Errorf("state: partition count of %q holds %d bytes, want 4: state is corrupt", k, len(v))
		}
		out[string(k)] = int32(binary.BigEndian.Uint32(v))
		return nil
	})
	return out, err
}

// Windows calls fn for every stored window, in key order. The slices are
// valid only during the call.
func (s *Store) Windows(fn func(key, value []byte) error) error {
	return s.scan(prefixWindow, fn)
}

// Subscriptions calls fn with every customer's subscription history.
func (s *Store) Subscriptions(fn func(customer, value []byte) error) error {
	return s.scan(prefixSubscription, fn)
}

// Grants calls fn with every stored grant balance.
func (s *Store) Grants(fn func(key, value []byte) error) error {
	return s.scan(prefixGrant, fn)
}

// SLAPeriods calls fn with every stored SLA period.
func (s *Store) SLAPeriods(fn func(key, value []byte) error) error {
	return s.scan(prefixSLA, fn)
}

// SLAServices calls fn with every stored probe bucket and outage of a
// shared service.
func (s *Store) SLAServices(fn func(key, value []byte) error) error {
	return s.scan(prefixSLAService, fn)
}

// Window returns the stored value of one window, if any. The engine reads
// windows that left memory when a late record revises them.
func (s *Store) Window(key []byte) ([]byte, bool, error) {
	v, closer, err := s.db.Get(append(append([]byte(nil), prefixWindow...), key...))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("state: get window: %w", err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), true, nil
}

// dedupEntryBytes is the size of one packed dedup entry: id hash, routing hash.
const dedupEntryBytes = 16 + 8

// setDedup writes a checkpoint's new dedup ids: one value per bucket and
// first byte of the id hash, its entries sorted by id hash. Packing them
// saves Pebble a key per record (the memtable insert, the flush and the
// compactions of that key) and keeps lookups to a binary search in the few
// values of one bucket and byte. It sorts adds.
func setDedup(b batchWriter, seq uint64, adds []DedupEntry) error {
	slices.SortFunc(adds, func(x, y DedupEntry) int {
		if c := cmp.Compare(x.BucketNs, y.BucketNs); c != 0 {
			return c
		}
		return bytes.Compare(x.IDHash[:], y.IDHash[:])
	})
	var value []byte
	for i := 0; i < len(adds); {
		j := i + 1
		for j < len(adds) && adds[j].BucketNs == adds[i].BucketNs && adds[j].IDHash[0] == adds[i].IDHash[0] {
			j++
		}
		value = value[:0]
		for _, d := range adds[i:j] {
			value = binary.BigEndian.AppendUint64(append(value, d.IDHash[:]...), d.RoutingHash)
		}
		key := binary.BigEndian.AppendUint64(append(dedupPrefix(adds[i].BucketNs), adds[i].IDHash[0]), seq)
		if err := b.Set(key, value, nil); err != nil {
			return fmt.Errorf("state: batch dedup: %w", err)
		}
		i = j
	}
	return nil
}

// HasDedup reports whether an event id is remembered in bucketNs.
func (s *Store) HasDedup(bucketNs int64, id [16]byte) (bool, error) {
	lower := append(dedupPrefix(bucketNs), id[0])
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(lower)})
	if err != nil {
		return false, fmt.Errorf("state: dedup iterator: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return false, fmt.Errorf("state: read dedup ids: %w", err)
		}
		if len(v)%dedupEntryBytes != 0 {
			return false, fmt.Errorf("state: malformed dedup value of %d bytes: state is corrupt", len(v))
		}
		n := len(v) / dedupEntryBytes
		i := sort.Search(n, func(i int) bool { return bytes.Compare(v[i*dedupEntryBytes:i*dedupEntryBytes+16], id[:]) >= 0 })
		if i < n && bytes.Equal(v[i*dedupEntryBytes:i*dedupEntryBytes+16], id[:]) {
			return true, nil
		}
	}
	if err := it.Error(); err != nil {
		return false, fmt.Errorf("state: scan dedup ids: %w", err)
	}
	return false, nil
}

// Dedup calls fn for every stored dedup entry.
func (s *Store) Dedup(fn func(DedupEntry) error) error {
	return s.scan(prefixDedup, func(k, v []byte) error {
		if len(k) != 8+1+8 || len(v)%dedupEntryBytes != 0 {
			return fmt.Errorf("state: malformed dedup entry: state is corrupt")
		}
		bucket := int64(binary.BigEndian.Uint64(k))
		for ; len(v) > 0; v = v[dedupEntryBytes:] {
			e := DedupEntry{BucketNs: bucket, RoutingHash: binary.BigEndian.Uint64(v[16:])}
			copy(e.IDHash[:], v)
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	})
}

// empty reports whether the database holds no key at all (an error counts
// as not empty: the folder is then refused as it would have been).
func (s *Store) empty() bool {
	it, err := s.db.NewIter(nil)
	if err != nil {
		return false
	}
	defer it.Close()
	return !it.First() && it.Error() == nil
}

// migrateDedup moves dedup ids stored one per key (d/, before 2026-11-25)
// into the packed layout, as if one checkpoint numbered 0 had added them.
// The old keys are already in (bucket, hash) order, so it streams: memory
// holds the ids of one bucket and first hash byte at a time, packed by
// setDedup as a checkpoint's are, in batches of about batchBytes. The old keys are deleted last, in the final synced
// batch; a crash before that leaves them, and the next open migrates them
// again, rewriting the same values.
func (s *Store) migrateDedup(batchBytes int) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDedupV1, UpperBound: prefixEnd(prefixDedupV1)})
	if err != nil {
		return fmt.Errorf("state: dedup migration iterator: %w", err)
	}
	defer it.Close()
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	var group []DedupEntry // one bucket and first hash byte
	ids := 0
	put := func() error {
		if len(group) == 0 {
			return nil
		}
		if err := setDedup(b, 0, group); err != nil {
			return err
		}
		group = group[:0]
		if b.Len() < batchBytes {
			return nil
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return fmt.Errorf("state: migrate dedup ids to the packed layout: %w", err)
		}
		b.Close()
		b = s.db.NewBatch()
		return nil
	}
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key()[len(prefixDedupV1):], it.Value()
		if len(k) != 24 || len(v) != 8 {
			return fmt.Errorf("state: malformed dedup entry: state is corrupt")
		}
		e := DedupEntry{BucketNs: int64(binary.BigEndian.Uint64(k)), RoutingHash: binary.BigEndian.Uint64(v)}
		copy(e.IDHash[:], k[8:])
		if len(group) > 0 && (e.BucketNs != group[0].BucketNs || e.IDHash[0] != group[0].IDHash[0]) {
			if err := put(); err != nil {
				return err
			}
		}
		group = append(group, e)
		ids++
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("state: scan old dedup ids: %w", err)
	}
	if ids == 0 {
		return nil
	}
	if err := put(); err != nil {
		return err
	}
	if err := b.DeleteRange(prefixDedupV1, prefixEnd(prefixDedupV1), nil); err != nil {
		return fmt.Errorf("state: batch dedup migration: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("state: migrate %d dedup ids to the packed layout: %w", ids, err)
	}
	return nil
}

// migrateBatchBytes bounds a dedup migration batch when a store opens.
const migrateBatchBytes = 64 << 20

func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("state: iterator %q: %w", prefix, err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key()[len(prefix):], it.Value()); err != nil {
			return err
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("state: scan %q: %w", prefix, err)
	}
	return nil
}

func partitionKey(topic string, partition int32) []byte {
	k := append(append([]byte(nil), prefixPartition...), topic...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint32(k, uint32(partition))
}

func dedupPrefix(bucketNs int64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(prefixDedup)+8+1+8), prefixDedup...), uint64(bucketNs))
}

// prefixEnd is the smallest key greater than every key starting with
// prefix (trailing 0xff bytes carry), nil if there is none.
func prefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] != 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func outboxKey(stream Stream, seq uint64, index uint32) []byte {
	k := append(append([]byte(nil), prefixOutbox...), byte(stream))
	k = binary.BigEndian.AppendUint64(k, seq)
	return binary.BigEndian.AppendUint32(k, index)
}

func sinkKey(name string) []byte {
	return append(append([]byte(nil), prefixSink...), name...)
}
