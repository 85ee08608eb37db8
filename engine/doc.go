// Package engine turns usage records read from Kafka into rated rows,
// exactly once in effect: every record ends in a window's state (and so in
// rows), in the dead letters, or counted as a duplicate, whatever crashes,
// restarts, rebalances and re-deliveries happen.
//
// # The pipeline
//
// One Engine consumes a set of source partitions (all of them, or one task's
// share under a Node):
//
//	readers (run.go)      one goroutine per partition: fetch, decode
//	                      (decode.go), check ownership (partitioner.go), and
//	                      route each event to its customer's shard
//	dispatcher            one goroutine (dispatch.go): takes decoded fetches
//	                      in order, moves offsets and the watermark, feeds the
//	                      shards, and cuts checkpoints
//	shards                one goroutine each (shard.go): the hot path; each
//	                      owns its customers' windows (window.go, the table in
//	                      windowtable.go), dedup ids (dedup.go), period
//	                      aggregates and fees (charge.go, subscription.go)
//	checkpoint writer     one goroutine (checkpoint.go): commits the shards'
//	                      snapshots (snapshot.go) with the offsets and rows
//	sink workers          one per sink (outbox.go): deliver rows from the
//	                      durable outbox, at least once, idempotently
//
// A Node (node.go) runs one Engine per task (partition p of every usage
// topic) with its own store, changelog and outbox, and moves tasks between
// instances through the Kafka group protocol (docs/scale-out.md).
//
// # Who owns what
//
// A shard's fields belong to its goroutine; nothing else reads or writes
// them, so the per-record path takes no lock. Queries (query.go) are
// messages answered by the shard between events. The dispatcher alone sends
// to shards, and the writer alone writes the store while running. Pricing is
// the Rater's (rater.go, pricing.go): pure functions of the plan, the
// subscriber and the quantities, safe from every shard.
//
// # Invariants
//
//   - The watermark never goes back (dispatch.go): a closed window stays
//     closed, and a record is late by the same rule on every replay.
//   - A barrier cuts every shard's input at the offsets the dispatcher
//     recorded (FIFO channels), so a checkpoint is a consistent cut.
//   - Every change to a window's durable fields is followed by markDirty
//     before the next barrier (windowtable.go).
//   - A row leaves the engine only from a durable checkpoint's outbox, and
//     a window's revisions only grow (charge.go), so sinks that keep the
//     latest revision per window identity converge on the same rows however
//     often rows are re-delivered.
//   - Increments of a billing period's windows add up to the charge of the
//     period's total (charge.go): allowances and tiers apply to the period,
//     and zero-charge increments move the period too. Within a customer,
//     windows due together are charged in the order of their start, meter
//     and group key by name (snapshot.go sortDue), the same on every replay.
//   - A window's key holds ids, not names (names.go): every window and
//     period in the table holds its customer's, group key's and rate's ids, which
//     are freed only at a barrier's end, so a key always spells the names it
//     was made from. State keys and rows use the names.
//   - Window decimals are exact: a num that cannot hold a value hands it to
//     a decimal (num.go), never rounds it.
//   - A record is late (dead-lettered) exactly when its window or period no
//     longer accepts records or its dedup bucket is forgotten
//     (timerules.go): the dedup horizon covers every record that is not late.
//   - A record is a duplicate exactly when its id was accepted before in a
//     dedup bucket still within the horizon, whatever the two records'
//     times: ids are in memory whole, or in the store and the cold index
//     (dedup.go, coldids.go), never in neither while their bucket counts.
//   - A provisioning action leaves the engine only in the checkpoint that
//     holds its period's announced share (actions.go): each threshold of a
//     period is announced once, whatever crashes and replays happen.
package engine
