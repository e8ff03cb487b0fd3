# kiln's build. `make demo` and `make test` are the two commands the README
# promises; both set up what they need first.
GO ?= $(shell command -v go || echo /usr/local/go/bin/go)
export PATH := $(PATH):/usr/local/go/bin

.PHONY: build setup test demo bench clean

build:
	$(GO) build -o bin/kiln ./cmd/kiln
	$(GO) build -o bin/containerd-shim-kiln-v2 ./cmd/containerd-shim-kiln-v2
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/kiln-init ./cmd/kiln-init
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/hello ./examples/hello
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/httpd ./examples/httpd

setup:
	./scripts/setup

# Boot a VM that runs one static program and show what it printed and how it
# exited; then run a small web server in a VM in the background, published on
# 127.0.0.1:8080, fetch its page through the forward, and remove the VM.
# Idempotent: a demo VM left by an interrupted run is removed first.
demo: setup
	./bin/kiln run --rm --memory 128m bin/hello -exit 3 from a microVM; echo "kiln run exited with $$?"
	@./bin/kiln rm -f kiln-demo >/dev/null 2>&1 || true
	./bin/kiln run -d --name kiln-demo --memory 128m -p 127.0.0.1:8080:80 bin/httpd
	@ok=; for i in $$(seq 60); do \
	  if command -v curl >/dev/null; then out=$$(curl -fsS --max-time 5 http://127.0.0.1:8080/ 2>/dev/null); \
	  elif command -v wget >/dev/null; then out=$$(wget -qO- -T 5 http://127.0.0.1:8080/ 2>/dev/null); \
	  else out=$$(bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && tail -n1 <&3' 2>/dev/null); fi; \
	  if [ -n "$$out" ]; then echo "GET http://127.0.0.1:8080/ -> $$out"; ok=1; break; fi; sleep 0.5; done; \
	./bin/kiln rm -f kiln-demo >/dev/null; [ -n "$$ok" ] || { echo "the demo VM did not answer on 127.0.0.1:8080"; exit 1; }

# Both tiers: the unit tests (what `go test ./...` alone runs, booting no VM)
# and the VM tests, which KILN_VM_TESTS=1 turns on (see internal/testenv).
test: setup
	./scripts/fetch-test-kernel
	./scripts/fetch-test-rootfs
	$(GO) vet ./...
	KILN_VM_TESTS=1 $(GO) test -race -count=1 -timeout 45m ./...

bench: setup
	$(GO) run ./bench/boot

clean:
	rm -rf bin
