# The two commands of the README: `make demo` and `make test`.
# Both install what they need first (as root) and can be run again at will.

CARGO ?= cargo
LAB = $(CARGO) run --quiet -p swarm-glue-lab --bin lab --

VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n1)

.PHONY: deps demo test lint unit agent-tests fuzz release packages image package-checks lab-tests bench check-clean

deps:
	@./tests/host-setup.sh

## The main job: a real swarm in the lab is moved to a new network.
demo: deps packages
	$(LAB) demo

## Every test: formatting, lints, unit tests, the agent against real netfilter in
## network namespaces, then the scenario tests in the lab.
test: deps lint unit agent-tests fuzz package-checks lab-tests check-clean

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace --lib --bins

agent-tests:
	$(CARGO) test -p glue-protocol -p glue-node-agent --tests

## The agent's command decoder under libFuzzer, for a bounded time.
FUZZ_SECONDS ?= 60
fuzz:
	cd glue-node-agent && $(CARGO) +nightly fuzz run open_command -- -max_total_time=$(FUZZ_SECONDS)

release:
	$(CARGO) build --release -p glue-manager -p glue-node-agent

## The Debian packages for amd64, arm64 and armhf (target/debian), and a newer
## amd64 one for the upgrade test; then the container image made from them.
packages: deps
	packaging/build-deb.sh
	packaging/build-deb.sh --version $(VERSION)+upgrade1 amd64

image: packages
	packaging/build-image.sh

## Architecture, qemu-user start of the arm builds, lintian, systemd-analyze.
package-checks: packages
	packaging/check.sh

## The lab installs the package (and, in one scenario, the image) on its managers.
lab-tests: packages image
	$(CARGO) test -p swarm-glue-lab --test baseline --test manager --test recovery --test pinned --test package -- --nocapture

RECOVERY_RUNS ?= 5

## Figures, printed as BENCH lines: the agent (size, idle RSS, applying 20
## rewrites), the manager at rest on a lab swarm (RSS, CPU over 5 minutes),
## then the lab (cold image build, lab up, moves).
bench: deps packages
	$(CARGO) bench -p glue-node-agent
	$(CARGO) bench -p glue-manager
	$(LAB) bench --rebuild-image
	$(LAB) bench-recovery --managers 3 --runs $(RECOVERY_RUNS)
	$(LAB) bench-recovery --managers 5 --runs $(RECOVERY_RUNS)

## Nothing of any lab may be left on this machine after the tests.
check-clean:
	@left="$$(/usr/bin/docker ps -aq --filter label=swarm-glue.lab; /usr/bin/docker network ls -q --filter label=swarm-glue.lab; iptables -S DOCKER-USER | grep swarm-glue-lab || true)"; \
	if [ -n "$$left" ]; then echo "the lab left this behind:"; echo "$$left"; exit 1; fi; \
	echo "check-clean: no lab container, network or host rule left"
