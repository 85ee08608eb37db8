package engine

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the engine's Prometheus metrics. Labels are bounded: reason,
// meter (configured meters only), sink, topic and partition; never a customer.
// Counters derived from checkpoints (dead letters, duplicates, windows
// emitted) count committed work only, so a replay after a crash does not
// count twice.
type Metrics struct {
	recordsConsumed    prometheus.Counter
	recordsDecoded     prometheus.Counter
	deadLetters        *prometheus.CounterVec
	duplicates         *prometheus.CounterVec
	windowsEmitted     *prometheus.CounterVec
	actions            *prometheus.CounterVec
	credits            prometheus.Counter
	ratedAmount        *prometheus.GaugeVec
	checkpointDuration prometheus.Histogram
	checkpointBytes    prometheus.Histogram
	checkpointSeq      prometheus.Gauge
	checkpointErrors   prometheus.Counter
	sinkBatchDuration  *prometheus.HistogramVec
	sinkRows           *prometheus.CounterVec
	sinkErrors         *prometheus.CounterVec
	sinkLagCheckpoints *prometheus.GaugeVec
	consumerLag        *prometheus.GaugeVec
	unreadOffsets      *prometheus.GaugeVec
	watermark          prometheus.Gauge
	liveWindows        prometheus.Gauge
	dedupIDs           prometheus.Gauge
	dedupBytes         prometheus.Gauge
	backpressure       prometheus.Gauge
	coldReads          prometheus.Counter
	spilled            prometheus.Counter

	reg        prometheus.Registerer
	collectors []prometheus.Collector
}

// NewMetrics registers the engine's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		recordsConsumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_records_consumed_total", Help: "Records read from source partitions (replays after a restart count again).",
		}),
		recordsDecoded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_records_decoded_total", Help: "Records decoded into usage events.",
		}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_dead_letters_total", Help: "Records sent to the dead-letter topic, by reason (committed).",
		}, []string{"reason"}),
		duplicates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_duplicates_total", Help: "Duplicate events removed by id, by meter (committed).",
		}, []string{"meter"}),
		windowsEmitted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_windows_emitted_total", Help: "Rated window revisions emitted, by final (1 closed, 0 provisional) (committed).",
		}, []string{"final"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_provisioning_actions_total", Help: "Provisioning actions announced (entitlement thresholds crossed), by action (committed).",
		}, []string{"action"}),
		credits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_sla_credit_rows_total", Help: "SLA credit rows emitted, revisions included (committed).",
		}),
		ratedAmount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_rated_amount", Help: "Net amount rated since start, by currency (highest revisions; display only, billing reads the sinks).",
		}, []string{"currency"}),
		checkpointDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_checkpoint_duration_seconds", Help: "Time from barrier to durable Pebble commit of a checkpoint.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		checkpointBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tally_checkpoint_entries", Help: "Store entries written per checkpoint.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 12),
		}),
		checkpointSeq: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_checkpoint_sequence", Help: "Sequence of the last durable checkpoint.",
		}),
		checkpointErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_checkpoint_errors_total", Help: "Failed attempts to commit a checkpoint to the task's changelog (a broker outage); each is retried while the checkpoint waits.",
		}),
		sinkBatchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tally_sink_batch_duration_seconds", Help: "Time to write one batch to a sink, successful attempts.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"sink"}),
		sinkRows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_sink_rows_total", Help: "Rows written to a sink (re-deliveries after a restart count again).",
		}, []string{"sink"}),
		sinkErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_sink_errors_total", Help: "Failed sink batch attempts; each is retried.",
		}, []string{"sink"}),
		sinkLagCheckpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_sink_lag_checkpoints", Help: "Durable checkpoints whose rows a sink has not fully delivered.",
		}, []string{"sink"}),
		consumerLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_consumer_lag_records", Help: "Records between the partition's high-water mark and the next offset Tally reads.",
		}, []string{"topic", "partition"}),
		unreadOffsets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_source_unread_offsets", Help: "Offsets at the start of a partition that retention deleted before Tally read them (never rated); alert on any.",
		}, []string{"topic", "partition"}),
		watermark: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_watermark_seconds", Help: "Engine event-time watermark, Unix seconds.",
		}),
		liveWindows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_live_windows", Help: "Windows held in memory (open or still revisable).",
		}),
		dedupIDs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_dedup_ids", Help: "Event ids remembered for deduplication: in memory, and slots of the cold index of ids in the store (expired ones included until its next rebuild).",
		}),
		dedupBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_dedup_memory_bytes", Help: "Memory held by the dedup indexes (ids in memory, cold index).",
		}),
		backpressure: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tally_backpressure", Help: "1 while consumption is paused because sinks are behind.",
		}),
		spilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_windows_spilled_total", Help: "Closed windows moved from memory to the store to keep within maxLiveWindows.",
		}),
		coldReads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tally_state_reads_total", Help: "Windows and event ids read back from the store for late records (committed).",
		}),
	}
	m.reg = reg
	m.collectors = []prometheus.Collector{m.recordsConsumed, m.recordsDecoded, m.deadLetters, m.duplicates, m.windowsEmitted,
		m.actions, m.credits, m.ratedAmount, m.checkpointDuration, m.checkpointBytes, m.checkpointSeq, m.checkpointErrors, m.sinkBatchDuration,
		m.sinkRows, m.sinkErrors, m.sinkLagCheckpoints, m.consumerLag, m.unreadOffsets, m.watermark, m.liveWindows,
		m.dedupIDs, m.dedupBytes, m.backpressure, m.coldReads, m.spilled}
	reg.MustRegister(m.collectors...)
	return m
}

// unregister removes the metrics from their registry (a task that left).
func (m *Metrics) unregister() {
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
