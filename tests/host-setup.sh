#!/usr/bin/env bash
# Makes this machine ready for the lab: Debian packages, and a running dockerd.
# Idempotent: installs only what is missing and starts dockerd only if none answers.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "host-setup: the lab needs root (iptables, containers with systemd); run as root" >&2
  exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "host-setup: cargo is missing; install a Rust toolchain (rustup, Rust >= 1.89) first" >&2
  exit 1
fi

# The decoder's fuzz target builds with nightly (sanitizers) and cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "host-setup: the Rust nightly toolchain is missing (rustup toolchain install nightly); make fuzz needs it" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "host-setup: installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi

# Packaging: cross compilers for arm64 and armhf, qemu-user to start what
# they built, lintian, binutils (objdump, readelf), systemd-analyze.
packages=(docker.io debootstrap busybox-static iptables iproute2 conntrack make ca-certificates
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-arm-linux-gnueabihf libc6-dev-armhf-cross
  qemu-user lintian binutils systemd dpkg-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "host-setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for target in aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf; do
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "host-setup: adding the Rust target $target"
    rustup target add "$target" >/dev/null
  fi
done

docker=/usr/bin/docker
if ! "$docker" info >/dev/null 2>&1; then
  if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ]; then
    systemctl start docker.service
  else
    echo "host-setup: starting dockerd (log: /var/log/swarm-glue-dockerd.log)"
    setsid nohup dockerd >/var/log/swarm-glue-dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do
    "$docker" info >/dev/null 2>&1 && break
    sleep 0.5
  done
  "$docker" info >/dev/null 2>&1 || {
    echo "host-setup: dockerd did not come up; see /var/log/swarm-glue-dockerd.log" >&2
    exit 1
  }
fi
iptables -S DOCKER-USER >/dev/null 2>&1 || {
  echo "host-setup: dockerd runs without its DOCKER-USER chain (started with --iptables=false?)" >&2
  exit 1
}
