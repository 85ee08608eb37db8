# Shell helpers of the bench/*.sh scripts (sourced, not run).

# alive PID: the process runs (a child that exited but was not waited for
# is a zombie, which kill -0 still finds).
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# stop_pid PID [SECONDS]: SIGTERM, up to SECONDS (10), then SIGKILL; reaps it.
stop_pid() {
  local pid=$1 tenths=$((${2:-10} * 10)) i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 "$tenths"); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# port_free HOST PORT: nothing listens there.
port_free() { ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# bench_meters: the meters section of a Tally config reading what
# `tally bench --to-file` generates, each grouped as the side-by-side's
# ClickHouse view groups it.
bench_meters() {
  cat <<'EOF'
meters:
  - {name: voice_seconds, aggregation: SUM, groupBy: [destination]}
  - {name: sms, aggregation: SUM, groupBy: [destination]}
  - {name: data_bytes, aggregation: SUM, groupBy: [rat]}
  - {name: iot_bytes, aggregation: SUM, groupBy: [device]}
EOF
}
