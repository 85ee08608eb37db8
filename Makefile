# Tally. `make demo` runs a live demo on embedded defaults; `make test` runs
# every test, installing and starting what they need (see .ci/test.sh).
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
STATICCHECK_VERSION ?= v0.8.2

.PHONY: demo test lint bench build fuzz chaos

build:
	$(GO) build -o tally ./cmd/tally

demo: build
	./tally demo $(DEMO_FLAGS)

test:
	bash .ci/test.sh

lint:
	@out=$$(gofmt -l cmd engine connectors rating state bench); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@command -v staticcheck >/dev/null 2>&1 || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	staticcheck ./...

# Component benchmarks, then the end-to-end table of `tally bench`
# (BENCH_FLAGS, e.g. --records 20000000). bench/RESULTS.md holds the figures.
bench: build
	$(GO) test -run '^$$' -bench 'Decode|ShardApply|Aggregate|UsageQuery|EntitlementCheck|EmitOpen|Commit|HasDedup|Increment|RateEvent|RatedRowJSON' -benchmem ./engine/ ./rating/ ./state/
	$(GO) test -run '^$$' -bench 'BenchmarkCore$$' -benchtime 400000x -benchmem ./engine/
	$(GO) test -run '^$$' -bench 'CheckpointStream' -benchtime 40x -benchmem ./state/
	$(GO) test -run '^$$' -bench 'LiveStatePerKey|DedupCapacity' -benchtime 1x ./engine/
	$(GO) test -run '^$$' -bench 'RecordToAction' -benchtime 1000x ./engine/
	@if [ -n "$$TALLY_TEST_CLICKHOUSE" ]; then $(GO) test -run '^$$' -bench Write -benchmem -benchtime 20x ./connectors/clickhouse/; \
	else echo "ClickHouse insert benchmark skipped: set TALLY_TEST_CLICKHOUSE=host:port"; fi
	./tally bench $(BENCH_FLAGS)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(or $(FUZZTIME),120s) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCSV$$' -fuzztime $(or $(FUZZTIME),120s) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzScanPlain$$' -fuzztime $(or $(FUZZTIME),120s) ./engine/
	$(GO) test -run '^$$' -fuzz '^FuzzParseCatalog$$' -fuzztime $(or $(FUZZTIME),120s) ./rating/
	$(GO) test -run '^$$' -fuzz '^FuzzConfig$$' -fuzztime $(or $(FUZZTIME),120s) ./cmd/tally/

# The long crash harness: 100 SIGKILLs (KILLS=n to change), ClickHouse
# started as for make test.
chaos:
	TALLY_TEST_ONLY='TestChaosKills' TALLY_CHAOS_KILLS=$(or $(KILLS),100) TALLY_CHAOS_RECORDS=$(or $(RECORDS),60000) bash .ci/test.sh
