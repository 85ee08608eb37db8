#!/usr/bin/env bash
# The pause a cooperative rebalance causes (issue 12), measured on two real
# `tally run` processes in one consumer group (scaleOut: group).
#
# What it does
#   A standalone kfake broker (bench/kafka) holds a usage topic of
#   PARTITIONS partitions preloaded with RECORDS generated records, keyed by
#   customer. Instance a starts alone and owns every task; once it has
#   consumed a fifth of the topic, instance b joins: the group moves half
#   the tasks to b. Later b leaves gracefully (SIGTERM) and its tasks move
#   back. For every task that moved, from the instances' logs:
#     stop    the old owner's hand-over (final checkpoint), from "task
#             stopping" to "task stopped";
#     pause   from "task stopping" on the old owner to "state recovered" on
#             the new one (it reads records from then on): the time the
#             task's customers were not processed;
#   and whether any task that did not move stopped (cooperative-sticky:
#   none should).
#
# How to run
#   bash bench/rebalance.sh                 # 2,000,000 records, 4 partitions
#   RECORDS=500000 PARTITIONS=8 bash bench/rebalance.sh
#   Ports: KAFKA_ADDR (127.0.0.1:29192), HTTP_A/HTTP_B (127.0.0.1:29465/6);
#   KEEP=1 keeps the work folder (logs, configs).
set -Eeuo pipefail

RECORDS=${RECORDS:-2000000}
PARTITIONS=${PARTITIONS:-4}
SUBSCRIBERS=${SUBSCRIBERS:-100000}
KAFKA_ADDR=${KAFKA_ADDR:-127.0.0.1:29192}
HTTP_A=${HTTP_A:-127.0.0.1:29465}
HTTP_B=${HTTP_B:-127.0.0.1:29466}
TIMEOUT=${TIMEOUT:-300}
KEEP=${KEEP:-0}
TOPIC=usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
WORK=${WORKDIR:-$(mktemp -d /tmp/tally-rebalance.XXXXXX)}
mkdir -p "$WORK"
kafka_pid="" a_pid="" b_pid=""

log() { printf '%s rebalance: %s\n' "$(date +%T)" "$*" >&2; }
die() {
  log "FAILED: $*"
  for f in "$WORK"/*.log; do [ -s "$f" ] && { echo "---- $f" >&2; tail -n 12 "$f" >&2; }; done
  exit 1
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "$a_pid" "$b_pid" "$kafka_pid"; do [ -n "$pid" ] && stop_pid "$pid" 30; done
  if [ "$KEEP" = 1 ]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

metric() { # metric ADDR NAME: sum of a metric's samples, or empty
  curl -s --max-time 2 "http://$1/metrics" 2>/dev/null |
    awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2; f = 1 } END { if (f) printf "%.0f", s }' || true
}
# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
  local what=$1 secs=$2 deadline
  shift 2
  deadline=$(($(date +%s) + secs))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.05
  done
}

command -v kcat >/dev/null || {
  log "installing kcat from apt"
  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat; } >&2 ||
    die "apt-get install kcat failed"
}
for hp in "$KAFKA_ADDR" "$HTTP_A" "$HTTP_B"; do
  port_free "${hp%:*}" "${hp##*:}" || die "something already listens on $hp"
done
log "work folder $WORK; building tally and bench/kafka"
(cd "$ROOT" && go build -o "$WORK/tally" ./cmd/tally && go build -o "$WORK/kafka" ./bench/kafka) >&2 || die "go build failed"

"$WORK/kafka" -addr "$KAFKA_ADDR" -topic "$TOPIC" -partitions "$PARTITIONS" >"$WORK/kafka.log" 2>&1 &
kafka_pid=$!
wait_for "bench/kafka to listen" 10 grep -q '^kafka: listening' "$WORK/kafka.log"

log "generating and preloading $RECORDS records"
"$WORK/tally" bench --to-file "$WORK/usage.jsonl" --plan-file "$WORK/plan.yaml" --records "$RECORDS" --subscribers "$SUBSCRIBERS" >&2 ||
  die "tally bench --to-file failed"
sed -E 's/^\{"customer":"([^"]*)".*/\1\t&/' "$WORK/usage.jsonl" |
  timeout "$TIMEOUT" kcat -P -b "$KAFKA_ADDR" -t "$TOPIC" -K $'\t' -z none \
    -X topic.partitioner=murmur2_random -X linger.ms=20 -X batch.num.messages=10000 \
    -X queue.buffering.max.messages=1000000 2>"$WORK/kcat.log" || die "kcat -P failed"
rm -f "$WORK/usage.jsonl"

config() { # config NAME HTTP
  cat >"$WORK/$1.yaml" <<EOF
plan: $WORK/plan.yaml
stateDir: $WORK/state-$1
httpAddr: $2
scaleOut: group
kafka:
  brokers: [$KAFKA_ADDR]
  topics: [$TOPIC]
  group: rebalance-bench
window: 1m
reviseHorizon: 2h
checkpointInterval: 1s
$(bench_meters)
EOF
}
config a "$HTTP_A"
config b "$HTTP_B"

# recovered_at_least LOG N: LOG says "state recovered" N times or more.
recovered_at_least() { [ "$(grep -c 'msg="state recovered"' "$1" 2>/dev/null)" -ge "$2" ]; }
consumed_at_least() { local got; got=$(metric "$1" tally_records_consumed_total); [ -n "$got" ] && [ "$got" -ge "$2" ]; }

log "instance a starts alone"
"$WORK/tally" run --config "$WORK/a.yaml" >"$WORK/a.log" 2>&1 &
a_pid=$!
wait_for "a to start its $PARTITIONS tasks" 60 recovered_at_least "$WORK/a.log" "$PARTITIONS"
wait_for "a to consume a fifth of the topic" "$TIMEOUT" consumed_at_least "$HTTP_A" $((RECORDS / 5))

log "instance b joins"
"$WORK/tally" run --config "$WORK/b.yaml" >"$WORK/b.log" 2>&1 &
b_pid=$!
wait_for "b to take its share" 60 recovered_at_least "$WORK/b.log" $((PARTITIONS / 2))
sleep 3

log "instance b leaves (SIGTERM)"
kill -TERM "$b_pid"
wait_for "b to stop" 60 bash -c "! kill -0 $b_pid 2>/dev/null"
wait "$b_pid" || die "instance b exited with an error"
b_pid=""
wait_for "a to take the tasks back" 60 recovered_at_least "$WORK/a.log" $((PARTITIONS + PARTITIONS / 2))
sleep 1
stop_pid "$a_pid" 30
a_pid=""

# ---------------------------------------------------------------- report
# Lines of interest, as "epoch-seconds instance event task".
events() { # events NAME
  awk -v who="$1" '
    /msg="task stopping"|msg="task stopped"|msg="state recovered"/ {
      t = ""; task = ""; ev = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^time=/) t = substr($i, 6)
        if ($i ~ /^task=/) task = substr($i, 6)
      }
      if ($0 ~ /task stopping/) ev = "stopping"; else if ($0 ~ /task stopped/) ev = "stopped"; else ev = "recovered"
      if (task != "") print t, who, ev, task
    }' "$WORK/$1.log"
}
{ events a; events b; } | while read -r t who ev task; do
  printf '%s %s %s %s\n' "$(date -d "$t" +%s.%N)" "$who" "$ev" "$task"
done | sort -n >"$WORK/events.txt"

echo
echo "== Cooperative rebalance pauses: $PARTITIONS tasks, $RECORDS records preloaded, 2 instances, $(nproc) CPUs =="
echo
echo "| move | task | old owner's hand-over (final checkpoint) | pause until the new owner reads |"
echo "|---|---|---|---|"
awk '
  $3 == "stopping" { stopping[$2 "/" $4] = $1; last[$4] = $2 }
  $3 == "stopped"  { stopped[$2 "/" $4] = $1 }
  $3 == "recovered" {
    if ($4 in last && last[$4] != $2) {
      from = last[$4]; k = from "/" $4
      printf "| %s → %s | %s | %.3f s | %.3f s |\n", from, $2, $4, stopped[k] - stopping[k], $1 - stopping[k]
      n++; sum += $1 - stopping[k]; if ($1 - stopping[k] > worst) worst = $1 - stopping[k]
      delete last[$4]
    }
  }
  END { if (n) printf "\n%d moves; pause mean %.3f s, worst %.3f s\n", n, sum / n, worst }
' "$WORK/events.txt"
# Cooperative-sticky moves only the tasks that change owner: when b joined,
# a stopped half its tasks and no other.
moved=$(awk '$2 == "b" && $3 == "stopping" { exit } $2 == "a" && $3 == "stopping" { n++ } END { print n + 0 }' "$WORK/events.txt")
echo "tasks a stopped when b joined: $moved of $PARTITIONS (the ones that moved)"
echo "a → b: b joins, a hands the tasks over (final checkpoint, no open windows emitted, no sink drain)."
echo "b → a: b stops (SIGTERM), a graceful stop: its final checkpoint emits open windows and drains its sinks."
