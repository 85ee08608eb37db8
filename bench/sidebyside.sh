#!/usr/bin/env bash
# Side by side: ClickHouse's own Kafka engine vs Tally over the same
# preloaded Kafka topic (issue 13).
#
# What it measures
#   One topic `usage` (4 partitions) on a standalone kfake broker
#   (bench/kafka) is preloaded with RECORDS generated usage records
#   (`tally bench --to-file`: ~1% producer retries, ~1% records 2 min late,
#   20% IoT), keyed by customer with librdkafka's murmur2 partitioner.
#   Then, on one ClickHouse 18.16 server:
#   1. ClickHouse's Kafka engine, as a user would build it: a Kafka table
#      (JSONEachRow), a SummingMergeTree target per customer, meter,
#      dimension and minute (sum of value, count) and a materialized view
#      between them. Timed from CREATE of the Kafka table until
#      sum(count) in the target reaches RECORDS.
#   2. Tally (`tally run`, scaleOut off, 1-minute windows, the same four
#      meters grouped by the same dimension, the bench plan priced) with
#      its ClickHouse sink on the same server (database sbs_tally), no
#      rated Kafka topic. Timed from process start until every record is
#      in ClickHouse: once it has consumed RECORDS (its
#      tally_records_consumed_total metric), it gets SIGINT, whose final
#      checkpoint emits the still-open windows and drains the sink; done
#      when sum(event_count) of rated_usage FINAL equals the number of
#      distinct record ids (and it must exit 0).
#   It prints both rates, Tally's ratio to the Kafka engine (issue 13's goal:
#   >= 8x) and what each counted against the truth computed from the file:
#   the Kafka engine counts every producer retry (at-least-once, no
#   dedup) and has no event-time windows, lateness or pricing; Tally
#   dedups by id and rates.
#
# How to run (as root: it may apt-get install clickhouse-server and kcat)
#   bash bench/sidebyside.sh                    # 1,000,000 records
#   RECORDS=50000 bash bench/sidebyside.sh      # or: bash bench/sidebyside.sh --records 50000
#   Other knobs (environment): ROUNDS (1; best round of each reported),
#   PARTITIONS (4), SUBSCRIBERS (100000), DUP_PERCENT (1), LATE_PERCENT
#   (1), IOT_PERCENT (20), CH_NUM_CONSUMERS (1), CH_MAX_BLOCK_SIZE
#   (unset = 18.16's max_block_size, 65536), TIMEOUT (600 s per wait),
#   ports CH_TCP_PORT (29000), CH_HTTP_PORT (28123; ClickHouse also takes
#   CH_TCP_PORT+9 for interserver), KAFKA_ADDR (127.0.0.1:29092),
#   TALLY_HTTP (127.0.0.1:29464), KEEP=1 keeps the work folder, WORKDIR.
#   It starts its own ClickHouse (.ci/clickhouse.sh) and broker on those
#   ports and stops both at exit, failure and Ctrl-C included.
#
# What we found out about ClickHouse 18.16's Kafka engine (Debian's
# 18.16.1, linked to the system librdkafka 2.0.2, the one kcat uses)
#   - It talks to kfake fine (ApiVersion v3, Fetch v4, consumer group with
#     the range assignor). But it sets no auto.offset.reset, so
#     librdkafka's default `latest` applies: a fresh group over a
#     preloaded topic reads nothing, silently. Fix (server config, as the
#     ClickHouse docs show): <kafka><auto_offset_reset>smallest</...> in a
#     config.d file (keys under <kafka> are librdkafka settings, '_' for '.').
#   - Table settings in 18.16: kafka_broker_list, kafka_topic_list,
#     kafka_group_name, kafka_format, kafka_row_delimiter, kafka_schema,
#     kafka_num_consumers, kafka_max_block_size (nothing else, e.g. no
#     kafka_skip_broken_messages, which later versions added).
#   - JSONEachRow: the engine always skips unknown fields (it forces
#     input_format_skip_unknown_fields=1), so without help the nested
#     `dims` object is dropped silently. Columns `dims.rat`,
#     `dims.destination`, `dims.device` are filled only with
#     input_format_import_nested_json=1, which the engine takes from the
#     server's default profile (users.d), not from a query. `time` (RFC
#     3339 with nanoseconds) is read as String and converted in the view
#     with parseDateTimeBestEffort; `value` parses into Decimal(38,10).
#   - A stream reads until a 500 ms poll finds nothing (its JSONEachRow
#     reader asks several times) or stream_flush_interval_ms (7.5 s) passes,
#     pushes what it read through the view as one insert (100K records
#     appeared at once, though max_block_size is 65536) and only then
#     commits offsets; nothing is visible before. So there is a fixed
#     latency: a topic of 1 record took 4.6 s end to end (server trace
#     log: "Execution took 4123 ms" for a stream of 1 message, started
#     0.5 s after the view), 50K records 4.7 s, 100K 4.9 s. At small
#     RECORDS the Kafka engine's rate is mostly this latency, not its
#     throughput: judge the ratio at 1M or more.
#   - kafka_num_consumers=2 (one server, one group) re-read records across
#     the rebalance when the second consumer joined: 157,348 rows for a
#     100,000-record topic. Offsets are committed only after a stream's
#     insert, so anything read before a rebalance is read again. The
#     default here is 1 consumer.
set -Eeuo pipefail

usage() { sed -n '2,/^set -Eeuo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
  --records) RECORDS=${2:?--records needs a number}; shift 2 ;;
  --records=*) RECORDS=${1#*=}; shift ;;
  -h|--help) usage; exit 0 ;;
  *) echo "sidebyside: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

RECORDS=${RECORDS:-1000000}
ROUNDS=${ROUNDS:-1}
PARTITIONS=${PARTITIONS:-4}
SUBSCRIBERS=${SUBSCRIBERS:-100000}
DUP_PERCENT=${DUP_PERCENT:-1}
LATE_PERCENT=${LATE_PERCENT:-1}
IOT_PERCENT=${IOT_PERCENT:-20}
CH_NUM_CONSUMERS=${CH_NUM_CONSUMERS:-1}
CH_MAX_BLOCK_SIZE=${CH_MAX_BLOCK_SIZE:-}
TIMEOUT=${TIMEOUT:-600}
CH_TCP_PORT=${CH_TCP_PORT:-29000}
CH_HTTP_PORT=${CH_HTTP_PORT:-28123}
KAFKA_ADDR=${KAFKA_ADDR:-127.0.0.1:29092}
TALLY_HTTP=${TALLY_HTTP:-127.0.0.1:29464}
KEEP=${KEEP:-0}
TOPIC=usage

for v in RECORDS ROUNDS PARTITIONS SUBSCRIBERS CH_NUM_CONSUMERS TIMEOUT CH_TCP_PORT CH_HTTP_PORT; do
  case "${!v}" in ''|*[!0-9]*) echo "sidebyside: $v=${!v} is not a positive integer" >&2; exit 2 ;; esac
  [ "${!v}" -gt 0 ] || { echo "sidebyside: $v must be > 0" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
WORK=${WORKDIR:-$(mktemp -d /tmp/tally-sidebyside.XXXXXX)}
mkdir -p "$WORK"
CH_DIR=$WORK/clickhouse

kafka_pid=""
tally_pid=""
ch_started=0

log() { printf '%s sidebyside: %s\n' "$(date +%T)" "$*" >&2; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", n / s; else print 0 }'; }
# faster S BEST: S seconds beat the best so far (empty: none yet).
faster() { [ -z "$2" ] || awk -v s="$1" -v b="$2" 'BEGIN { exit !(s < b) }'; }



show_logs() {
  local f
  for f in "$WORK/kafka.log" "$WORK"/tally-*.log "$CH_DIR/log/clickhouse-server.err.log" "$CH_DIR/log/stdout.log"; do
    [ -s "$f" ] || continue
    echo "---- last lines of $f" >&2
    tail -n 15 "$f" >&2
  done
}

die() {
  log "FAILED: $*"
  show_logs
  exit 1
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -n "$tally_pid" ] && stop_pid "$tally_pid"
  [ -n "$kafka_pid" ] && stop_pid "$kafka_pid"
  if [ "$ch_started" = 1 ]; then
    TALLY_CH_TCP_PORT=$CH_TCP_PORT TALLY_CH_HTTP_PORT=$CH_HTTP_PORT "$ROOT/.ci/clickhouse.sh" stop "$CH_DIR" || true
  fi
  if [ "$KEEP" = 1 ]; then
    log "work folder kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "FAILED: unexpected error at line $LINENO: $BASH_COMMAND"' ERR
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ch SQL: one statement over ClickHouse's HTTP interface; fails on an error.
ch() {
  curl -sS --fail-with-body --max-time 120 "http://127.0.0.1:$CH_HTTP_PORT/" --data-binary "$1" ||
    die "ClickHouse query failed: $1"
}


# ---------------------------------------------------------------- setup
command -v go >/dev/null || die "go is not installed"
command -v curl >/dev/null || die "curl is not installed"
if ! command -v kcat >/dev/null; then
  log "installing kcat from apt"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq kcat; } >&2 || die "apt-get install kcat failed"
fi
for hp in "127.0.0.1:$CH_TCP_PORT" "127.0.0.1:$((CH_TCP_PORT + 9))" "$KAFKA_ADDR" "$TALLY_HTTP"; do
  port_free "${hp%:*}" "${hp##*:}" || die "something already listens on $hp: stop it or choose other ports (see --help)"
done

log "work folder $WORK; building tally and bench/kafka"
(cd "$ROOT" && go build -o "$WORK/tally" ./cmd/tally && go build -o "$WORK/kafka" ./bench/kafka) >&2 ||
  die "go build failed"

log "starting ClickHouse on 127.0.0.1:$CH_TCP_PORT (HTTP $CH_HTTP_PORT)"
mkdir -p "$CH_DIR/config.d" "$CH_DIR/users.d"
# Server-wide settings the Kafka engine needs (see the notes above).
cat >"$CH_DIR/config.d/kafka.xml" <<'EOF'
<yandex>
    <!-- librdkafka settings of every Kafka engine consumer: read a fresh group from the start of the topic -->
    <kafka><auto_offset_reset>smallest</auto_offset_reset></kafka>
</yandex>
EOF
cat >"$CH_DIR/users.d/kafka.xml" <<'EOF'
<yandex>
    <profiles><default>
        <!-- the Kafka engine parses with the default profile: map the nested dims object to dims.* columns -->
        <input_format_import_nested_json>1</input_format_import_nested_json>
    </default></profiles>
</yandex>
EOF
ch_started=1
TALLY_CH_TCP_PORT=$CH_TCP_PORT TALLY_CH_HTTP_PORT=$CH_HTTP_PORT "$ROOT/.ci/clickhouse.sh" start "$CH_DIR" ||
  die "could not start ClickHouse"
ch_version=$(ch "SELECT version()")
[ "$(ch "SELECT value FROM system.settings WHERE name = 'input_format_import_nested_json'")" = 1 ] ||
  die "ClickHouse did not take users.d/kafka.xml (input_format_import_nested_json is not 1)"

log "starting kfake on $KAFKA_ADDR (topic $TOPIC, $PARTITIONS partitions)"
"$WORK/kafka" -addr "$KAFKA_ADDR" -topic "$TOPIC" -partitions "$PARTITIONS" >"$WORK/kafka.log" 2>&1 &
kafka_pid=$!
for _ in $(seq 1 100); do
  grep -q '^kafka: listening' "$WORK/kafka.log" 2>/dev/null && break
  alive "$kafka_pid" || die "bench/kafka exited"
  sleep 0.1
done
grep -q '^kafka: listening' "$WORK/kafka.log" || die "bench/kafka did not start within 10 s"

# ---------------------------------------------------------------- data
log "generating $RECORDS records"
"$WORK/tally" bench --to-file "$WORK/usage.jsonl" --plan-file "$WORK/plan.yaml" --records "$RECORDS" --subscribers "$SUBSCRIBERS" \
  --dup-percent "$DUP_PERCENT" --late-percent "$LATE_PERCENT" --iot-percent "$IOT_PERCENT" >&2 ||
  die "tally bench --to-file failed"
lines=$(wc -l <"$WORK/usage.jsonl")
[ "$lines" -eq "$RECORDS" ] || die "generated $lines records, wanted $RECORDS"
bytes=$(wc -c <"$WORK/usage.jsonl")
# Keys: the customer, the first field of every record (Go's JSON orders keys).
if grep -q -v -m1 '^{"customer":"' "$WORK/usage.jsonl"; then
  die "a generated record does not start with its customer; cannot key it"
fi

log "preloading the topic with kcat (keyed by customer, murmur2 partitioner)"
t=$(now)
sed -E 's/^\{"customer":"([^"]*)".*/\1\t&/' "$WORK/usage.jsonl" |
  timeout "$TIMEOUT" kcat -P -b "$KAFKA_ADDR" -t "$TOPIC" -K $'\t' -z none \
    -X topic.partitioner=murmur2_random -X linger.ms=20 -X batch.num.messages=10000 \
    -X queue.buffering.max.messages=1000000 2>"$WORK/kcat.log" ||
  die "kcat -P failed: $(tail -3 "$WORK/kcat.log")"
preload_s=$(secs "$t" "$(now)")
offsets=()
for ((p = 0; p < PARTITIONS; p++)); do offsets+=(-t "$TOPIC:$p:-1"); done
in_topic=$(timeout 60 kcat -b "$KAFKA_ADDR" -Q "${offsets[@]}" 2>"$WORK/kcat.log" | awk '/offset/ { s += $NF } END { print s + 0 }')
[ "$in_topic" -eq "$RECORDS" ] || die "the topic holds $in_topic records after the preload, wanted $RECORDS ($(tail -3 "$WORK/kcat.log"))"
log "preloaded $RECORDS records ($((bytes / RECORDS)) B each) in ${preload_s}s"

# The truth, from the file: distinct ids and the sum of their values.
ch "DROP DATABASE IF EXISTS sbs_truth"
ch "CREATE DATABASE sbs_truth"
ch "CREATE TABLE sbs_truth.raw (id String, value Decimal(38, 10)) ENGINE = MergeTree ORDER BY tuple()"
curl -sS --fail-with-body --max-time "$TIMEOUT" \
  "http://127.0.0.1:$CH_HTTP_PORT/?query=INSERT+INTO+sbs_truth.raw+FORMAT+JSONEachRow&input_format_skip_unknown_fields=1" \
  --data-binary @"$WORK/usage.jsonl" || die "loading the truth table failed"
read -r truth_rows truth_distinct < <(ch "SELECT count(), uniqExact(id) FROM sbs_truth.raw FORMAT TSV")
truth_all_value=$(ch "SELECT toString(sum(value)) FROM sbs_truth.raw")
truth_value=$(ch "SELECT toString(sum(v)) FROM (SELECT any(value) AS v FROM sbs_truth.raw GROUP BY id)")
ch "DROP DATABASE sbs_truth"
[ "$truth_rows" -eq "$RECORDS" ] || die "truth table holds $truth_rows records, wanted $RECORDS"
log "truth: $truth_distinct distinct ids among $RECORDS records ($((RECORDS - truth_distinct)) producer retries)"

# ---------------------------------------------------------------- ClickHouse Kafka engine
ch_best=0 ch_best_s="" ch_counted=0 ch_value=0 ch_rounds=""
run_clickhouse() {
  local round=$1 t0 t1 got=0 deadline extra=""
  [ -n "$CH_MAX_BLOCK_SIZE" ] && extra=", kafka_max_block_size = $CH_MAX_BLOCK_SIZE"
  ch "DROP DATABASE IF EXISTS sbs_ch"
  ch "CREATE DATABASE sbs_ch"
  ch "CREATE TABLE sbs_ch.usage_per_minute (
        customer String, meter String, grp String, minute DateTime,
        value Decimal(38, 10), count UInt64
      ) ENGINE = SummingMergeTree((value, count))
      PARTITION BY toYYYYMM(minute) ORDER BY (customer, meter, grp, minute)"
  log "ClickHouse Kafka engine, round $round: consuming"
  t0=$(now)
  ch "CREATE TABLE sbs_ch.usage_kafka (
        customer String, id String, meter String, time String, value Decimal(38, 10),
        \`dims.rat\` String, \`dims.destination\` String, \`dims.device\` String
      ) ENGINE = Kafka SETTINGS
        kafka_broker_list = '$KAFKA_ADDR', kafka_topic_list = '$TOPIC',
        kafka_group_name = 'sbs-clickhouse-$$-$round', kafka_format = 'JSONEachRow',
        kafka_num_consumers = $CH_NUM_CONSUMERS$extra"
  ch "CREATE MATERIALIZED VIEW sbs_ch.usage_per_minute_mv TO sbs_ch.usage_per_minute AS
      SELECT customer, meter,
             concat(\`dims.rat\`, \`dims.destination\`, \`dims.device\`) AS grp,
             toStartOfMinute(parseDateTimeBestEffort(time)) AS minute,
             value, toUInt64(1) AS count
      FROM sbs_ch.usage_kafka"
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    got=$(ch "SELECT sum(count) FROM sbs_ch.usage_per_minute")
    [ "$got" -ge "$RECORDS" ] && break
    [ "$(date +%s)" -lt "$deadline" ] ||
      die "ClickHouse's Kafka engine has $got of $RECORDS records after ${TIMEOUT}s"
    sleep 0.1
  done
  t1=$(now)
  # Stop its consumer before anything else runs; then read what it counted.
  ch "DROP TABLE sbs_ch.usage_per_minute_mv"
  ch "DROP TABLE sbs_ch.usage_kafka"
  local s r counted value
  s=$(secs "$t0" "$t1")
  r=$(rate "$RECORDS" "$s")
  read -r counted value < <(ch "SELECT sum(count), toString(sum(value)) FROM sbs_ch.usage_per_minute FORMAT TSV")
  log "ClickHouse Kafka engine, round $round: ${s}s, $r records/s, counted $counted records"
  ch_rounds+=" $r"
  if faster "$s" "$ch_best_s"; then ch_best=$r ch_best_s=$s ch_counted=$counted ch_value=$value; fi
  ch "DROP DATABASE sbs_ch"
}

# ---------------------------------------------------------------- Tally

metric() { # metric NAME: sum of a metric's samples from Tally's /metrics, or empty
  curl -s --max-time 2 "http://$TALLY_HTTP/metrics" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) printf "%.0f", s }' || true
}

tally_best=0 tally_best_s="" tally_counted=0 tally_value=0 tally_dead=0 tally_rounds=""
tally_consume_s=0 tally_exit_s=0
run_tally() {
  local round=$1 cfg=$WORK/tally-$round.yaml tlog=$WORK/tally-$round.log t0 tc tr te got="" deadline rc
  ch "DROP DATABASE IF EXISTS sbs_tally"
  cat >"$cfg" <<EOF
plan: $WORK/plan.yaml
stateDir: $WORK/tally-state-$round
httpAddr: $TALLY_HTTP
# One engine, no changelog: a group (the default) would find round 1's
# changelogs and committed progress on the broker in round 2 and resume
# there, with nothing left to read.
scaleOut: off
kafka:
  brokers: [$KAFKA_ADDR]
  topics: [$TOPIC]
  partitioner: murmur2
  ratedTopic: ""
  deadLetterTopic: usage-dead-letters
clickhouse:
  addr: 127.0.0.1:$CH_TCP_PORT
  database: sbs_tally
window: 1m
reviseHorizon: 2h
checkpointInterval: 1s
drainTimeout: ${TIMEOUT}s
$(bench_meters)
EOF
  log "Tally, round $round: consuming"
  t0=$(now)
  "$WORK/tally" run --config "$cfg" >"$tlog" 2>&1 &
  tally_pid=$!
  deadline=$(($(date +%s) + TIMEOUT))
  while :; do
    alive "$tally_pid" || die "tally run exited before consuming the topic"
    got=$(metric tally_records_consumed_total)
    [ -n "$got" ] && [ "$got" -ge "$RECORDS" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || die "Tally consumed ${got:-0} of $RECORDS records after ${TIMEOUT}s"
    sleep 0.02
  done
  tc=$(now)
  # Graceful stop: the final checkpoint emits the open windows and the sink
  # is drained. Done when ClickHouse holds every distinct record.
  kill -INT "$tally_pid"
  deadline=$(($(date +%s) + TIMEOUT))
  tr=""
  while :; do
    got=$(curl -sS --max-time 30 "http://127.0.0.1:$CH_HTTP_PORT/" \
      --data-binary "SELECT sum(event_count) FROM sbs_tally.rated_usage FINAL" 2>/dev/null || true)
    if [ "$got" = "$truth_distinct" ]; then tr=$(now); break; fi
    alive "$tally_pid" || break
    [ "$(date +%s)" -lt "$deadline" ] || die "Tally's rows in ClickHouse count ${got:-0} of $truth_distinct records after ${TIMEOUT}s"
    sleep 0.05
  done
  while alive "$tally_pid"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "tally run did not stop within ${TIMEOUT}s of SIGINT"
    sleep 0.02
  done
  te=$(now)
  rc=0
  wait "$tally_pid" || rc=$?
  tally_pid=""
  [ "$rc" -eq 0 ] || die "tally run exited with status $rc"
  local counted value dead s r
  read -r counted value < <(ch "SELECT sum(event_count), toString(sum(quantity)) FROM sbs_tally.rated_usage FINAL FORMAT TSV")
  dead=$(ch "SELECT count() FROM sbs_tally.dead_letters")
  # Tally may exit between two polls: then its rows were in by its exit.
  [ -n "$tr" ] || { tr=$te; [ "$counted" = "$truth_distinct" ] || log "Tally, round $round: rows in ClickHouse count $counted records, not $truth_distinct"; }
  s=$(secs "$t0" "$tr")
  r=$(rate "$RECORDS" "$s")
  log "Tally, round $round: ${s}s, $r records/s (consumed at $(secs "$t0" "$tc")s, exited at $(secs "$t0" "$te")s), counted $counted records, $dead dead letters"
  tally_rounds+=" $r"
  if faster "$s" "$tally_best_s"; then
    tally_best=$r tally_best_s=$s tally_counted=$counted tally_value=$value tally_dead=$dead
    tally_consume_s=$(secs "$t0" "$tc") tally_exit_s=$(secs "$t0" "$te")
  fi
  rm -rf "$WORK/tally-state-$round"
  ch "DROP DATABASE sbs_tally"
}

for ((round = 1; round <= ROUNDS; round++)); do
  run_clickhouse "$round"
  run_tally "$round"
done

# ---------------------------------------------------------------- report
# Same records on both sides: the ratio of the rates is that of the times.
ratio=$(awk -v t="$tally_best_s" -v c="$ch_best_s" 'BEGIN { if (t > 0) printf "%.1f", c / t; else print "n/a" }')
verdict=$(awk -v t="$tally_best_s" -v c="$ch_best_s" 'BEGIN { if (t > 0 && c >= 8 * t) print "met"; else print "NOT met" }')
# Below 1M records ClickHouse's fixed ~4.5 s latency, not its rate, decides.
[ "$RECORDS" -ge 1000000 ] || verdict="not judged below 1,000,000 records"
delta() { awk -v a="$1" -v b="$2" 'BEGIN { d = a - b; printf "%s%.10g", (d > 0 ? "+" : ""), d }'; }
exact() { [ "$1" = "$truth_distinct" ] && [ "$(delta "$2" "$truth_value")" = "0" ] && echo "exact" || echo "INEXACT"; }

cat <<EOF

== Side by side: ClickHouse $ch_version Kafka engine vs Tally, same kfake topic ==
$RECORDS records ($((bytes / RECORDS)) B each), $PARTITIONS partitions, $truth_distinct distinct ids ($((RECORDS - truth_distinct)) producer retries, ~$LATE_PERCENT% 2 min late), $(nproc) CPUs; best of $ROUNDS round(s)

| system | time to all in ClickHouse | records/s | records counted (truth $truth_distinct) | value summed (truth $truth_value) | |
|---|---|---|---|---|---|
| ClickHouse Kafka engine + MV (SummingMergeTree per customer, meter, dim, minute) | ${ch_best_s}s | $ch_best | $ch_counted ($(delta "$ch_counted" "$truth_distinct")) | $ch_value ($(delta "$ch_value" "$truth_value")) | $(exact "$ch_counted" "$ch_value") |
| Tally (1m windows, dedup, lateness, rated; ClickHouse sink) | ${tally_best_s}s | $tally_best | $tally_counted ($(delta "$tally_counted" "$truth_distinct")) | $tally_value ($(delta "$tally_value" "$truth_value")) | $(exact "$tally_counted" "$tally_value") |

Tally / ClickHouse Kafka engine: ${ratio}x (issue 13's goal >= 8x: $verdict)
rounds, records/s: ClickHouse${ch_rounds}; Tally${tally_rounds}
Tally: consumed everything at ${tally_consume_s}s ($(rate "$RECORDS" "$tally_consume_s") records/s), every row in ClickHouse at ${tally_best_s}s, exited at ${tally_exit_s}s; $tally_dead dead letters.
Notes: ClickHouse is timed from CREATE of its Kafka table to sum(count) = $RECORDS in the target, Tally from process start
to its rows in ClickHouse (FINAL) holding every distinct record. The Kafka engine counts every producer retry (no dedup,
at-least-once) and has no event-time windows, lateness, revisions or pricing; its sum of all values with retries was $truth_all_value.
The Kafka engine has a fixed ~4.5 s latency here (1 record: 4.6 s; see the notes in this script): small RECORDS understate its throughput.
EOF
