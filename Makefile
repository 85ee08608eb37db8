# Tally. `make demo` runs a live demo on embedded defaults; `make test` runs
# every test, installing and starting what they need (see .ci/test.sh).
GO ?= go
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin
STATICCHECK_VERSION ?= v0.8.2

.PHONY: demo test lint bench build fuzz

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

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./engine/ ./rating/ ./state/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 60s ./engine/
