package state

import (
	"bytes"
	"testing"
)

// TestKeyPrefixesAreDistinct: no key space of the store starts another
// (a new prefix equal to the delta log's once read windows as deltas).
func TestKeyPrefixesAreDistinct(t *testing.T) {
	prefixes := map[string][]byte{
		"partition": prefixPartition, "window": prefixWindow, "dedup": prefixDedup, "dedupV1": prefixDedupV1,
		"outbox": prefixOutbox, "outboxPacked": prefixOutboxPacked, "sink": prefixSink, "subscription": prefixSubscription,
		"grant": prefixGrant, "sla": prefixSLA, "slaService": prefixSLAService, "topic": prefixTopic, "partitionCount": prefixPartitionCount, "delta": prefixDelta,
		"format": keyFormat, "seq": keySeq, "watermark": keyWM, "gone": keyGone, "changelog": keyChangelog, "nodeName": keyNodeName,
	}
	for a, pa := range prefixes {
		for b, pb := range prefixes {
			if a != b && bytes.HasPrefix(pa, pb) {
				t.Errorf("key space %s (%q) starts with %s's (%q)", a, pa, b, pb)
			}
		}
	}
}
