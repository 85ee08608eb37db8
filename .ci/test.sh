#!/usr/bin/env bash
# make test: installs what the tests need when missing (kcat, ClickHouse,
# promtool, chromium; apt, as root), starts ClickHouse on loopback with a temporary data folder,
# runs every Go test against it, and stops it again.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin

need=()
command -v kcat >/dev/null 2>&1 || need+=(kcat)
command -v clickhouse-server >/dev/null 2>&1 || need+=(clickhouse-server)
command -v clickhouse-client >/dev/null 2>&1 || need+=(clickhouse-client)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus) # promtool: deploy/prometheus's rules and their tests
command -v chromium >/dev/null 2>&1 || need+=(chromium)   # headless: the console's browser test
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]} from apt" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

chdir=$(mktemp -d /tmp/tally-clickhouse-XXXXXX)
trap '.ci/clickhouse.sh stop "$chdir"; rm -rf "$chdir"' EXIT
.ci/clickhouse.sh start "$chdir"
export TALLY_TEST_CLICKHOUSE=127.0.0.1:${TALLY_CH_TCP_PORT:-19000}
echo "test.sh: ClickHouse $(clickhouse-client --port "${TALLY_CH_TCP_PORT:-19000}" -q 'SELECT version()') on $TALLY_TEST_CLICKHOUSE" >&2

if [ -n "${TALLY_TEST_ONLY:-}" ]; then
  go test -count=1 -timeout 60m -v -run "$TALLY_TEST_ONLY" ./cmd/tally/
  exit 0
fi
go test -race -count=1 -timeout 20m ./...

# Every fuzz target, briefly (make fuzz runs them for longer); the committed
# corpora under */testdata/fuzz ran above as plain tests. Budgets are counts
# of executions (about 5 s each here), not durations: with a duration, Go
# 1.26's fuzz coordinator can fail a target with "context deadline exceeded"
# and no failing input when the deadline races a worker (golang/go#75804,
# fixed in Go 1.27; seen here on FuzzParseCatalog).
for target in engine:FuzzDecode:25000 engine:FuzzDecodeCSV:15000 rating:FuzzParseCatalog:30000 cmd/tally:FuzzConfig:3000; do
  name=${target#*:}
  go test -run '^$' -fuzz "^${name%%:*}\$" -fuzztime "${TALLY_FUZZTIME:-${target##*:}x}" "./${target%%:*}/"
done
