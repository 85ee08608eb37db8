#!/usr/bin/env bash
# Starts or stops a throwaway ClickHouse server on loopback for the tests.
#   .ci/clickhouse.sh start DIR   install clickhouse-server if missing (apt, as
#                                 root), start it with its data under DIR,
#                                 wait until it answers; prints nothing else.
#   .ci/clickhouse.sh stop DIR    stop the server started in DIR.
# Ports: native ${TALLY_CH_TCP_PORT:-19000}, HTTP ${TALLY_CH_HTTP_PORT:-18123}
# (not the defaults, so a system ClickHouse does not interfere).
set -euo pipefail
cmd=${1:?usage: clickhouse.sh start|stop DIR}
dir=${2:?usage: clickhouse.sh start|stop DIR}
tcp_port=${TALLY_CH_TCP_PORT:-19000}
http_port=${TALLY_CH_HTTP_PORT:-18123}

case "$cmd" in
start)
  if ! command -v clickhouse-server >/dev/null 2>&1; then
    echo "clickhouse.sh: installing clickhouse-server from apt" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq clickhouse-server clickhouse-client >&2
  fi
  mkdir -p "$dir/data" "$dir/log" "$dir/tmp" "$dir/user_files" "$dir/format_schemas"
  cp /etc/clickhouse-server/users.xml "$dir/users.xml"
  # Debian's config: move every path under DIR, listen on IPv4 loopback only,
  # and use the test ports.
  sed -e "s#/var/lib/clickhouse/tmp/#$dir/tmp/#g" \
      -e "s#/var/lib/clickhouse/user_files/#$dir/user_files/#g" \
      -e "s#/var/lib/clickhouse/format_schemas/#$dir/format_schemas/#g" \
      -e "s#/var/lib/clickhouse/#$dir/data/#g" \
      -e "s#/var/log/clickhouse-server/#$dir/log/#g" \
      -e "s#/etc/clickhouse-server/users.xml#$dir/users.xml#g" \
      -e "s#<users_config>users.xml</users_config>#<users_config>$dir/users.xml</users_config>#" \
      -e '/<listen_host>::1<\/listen_host>/d' \
      -e '/<listen_host>::<\/listen_host>/d' \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$tcp_port</tcp_port>#" \
      -e "s#<http_port>8123</http_port>#<http_port>$http_port</http_port>#" \
      -e "s#<interserver_http_port>9009</interserver_http_port>#<interserver_http_port>$((tcp_port + 9))</interserver_http_port>#" \
      /etc/clickhouse-server/config.xml > "$dir/config.xml"
  if ! grep -q '<listen_host>127.0.0.1</listen_host>' "$dir/config.xml"; then
    sed -i "s#</yandex>#    <listen_host>127.0.0.1</listen_host>\n</yandex>#" "$dir/config.xml"
  fi
  if curl -sf "http://127.0.0.1:$http_port/ping" >/dev/null 2>&1; then
    echo "clickhouse.sh: something already answers on 127.0.0.1:$http_port; stop it or set TALLY_CH_HTTP_PORT/TALLY_CH_TCP_PORT" >&2
    exit 1
  fi
  # Start the server itself in the background (not a subshell around it),
  # so that the pid file names the server.
  cd "$dir"
  nohup clickhouse-server --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
  echo $! >"$dir/pid"
  cd - >/dev/null
  for _ in $(seq 1 150); do
    if curl -sf "http://127.0.0.1:$http_port/ping" >/dev/null 2>&1; then
      exit 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "clickhouse.sh: clickhouse-server exited; last log lines:" >&2
      tail -20 "$dir/log/stdout.log" "$dir/log/clickhouse-server.err.log" >&2 || true
      exit 1
    fi
    sleep 0.2
  done
  echo "clickhouse.sh: clickhouse-server did not answer on 127.0.0.1:$http_port within 30s" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Whatever still runs on this folder's config goes too.
  pkill -9 -f -- "--config-file=$dir/config.xml" 2>/dev/null || true
  ;;
*)
  echo "usage: clickhouse.sh start|stop DIR" >&2
  exit 2
  ;;
esac
