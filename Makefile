# kiln's build. `make demo` and `make test` are the two commands the README
# promises; both set up what they need first.
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
export PATH := $(PATH):/usr/local/go/bin

.PHONY: build setup test demo bench clean

build:
	$(GO) build -o bin/kiln ./cmd/kiln
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/kiln-init ./cmd/kiln-init
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/hello ./examples/hello

setup:
	./scripts/setup

# Boot a VM that runs one static program and show what it printed and how it
# exited.
demo: setup
	./bin/kiln run --rm --memory 128m bin/hello -exit 3 from a microVM; echo "kiln run exited with $$?"

test: setup
	./scripts/fetch-test-kernel
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

bench: setup
	$(GO) run ./bench/boot

clean:
	rm -rf bin
