#!/usr/bin/env bash
# Checks the packages packaging/build-deb.sh made, for every architecture:
# the control data names the right architecture, the binaries are ELF for it
# and start (under qemu-user for arm64 and armhf) printing version and commit,
# lintian passes (remaining tags are explained in debian/lintian-overrides),
# and the units pass `systemd-analyze verify`; prints their exposure scores.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
target_dir=${CARGO_TARGET_DIR:-$top/target}
version=${1:-$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)}
commit=$(git -C "$top" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
fail() { echo "package-check: $*" >&2; exit 1; }

machine() {
	case "$1" in
	amd64) echo "Advanced Micro Devices X86-64" ;;
	arm64) echo "AArch64" ;;
	armhf) echo "ARM" ;;
	esac
}
run_under() {
	case "$1" in
	amd64) echo "" ;;
	arm64) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
	armhf) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
	esac
}

for arch in amd64 arm64 armhf; do
	deb="$target_dir/debian/swarm-glue_${version}_${arch}.deb"
	[ -f "$deb" ] || fail "$deb is missing; run packaging/build-deb.sh"
	got=$(dpkg-deb --field "$deb" Architecture)
	[ "$got" = "$arch" ] || fail "$deb says Architecture: $got"
	[ "$(dpkg-deb --field "$deb" Version)" = "$version" ] || fail "$deb has the wrong version"
	x=$(mktemp -d /var/tmp/swarm-glue-check.XXXXXX)
	dpkg-deb -x "$deb" "$x"
	for b in usr/bin/glue-manager usr/bin/glue-node-agent; do
		m=$(readelf -h "$x/$b" | sed -n 's/^ *Machine: *//p')
		[ "$m" = "$(machine "$arch")" ] || fail "$arch: $b is for $m"
		# shellcheck disable=SC2046
		v=$($(run_under "$arch") "$x/$b" --version)
		case "$v" in
		*"$(basename "$b") "*" (commit $commit)") ;;
		*) fail "$arch: $b --version printed '$v'" ;;
		esac
		echo "package-check: $arch $b starts: $v"
	done
	for a in amd64 arm64 armhf; do
		m=$(readelf -h "$x/usr/lib/swarm-glue/agents/$a/glue-node-agent" | sed -n 's/^ *Machine: *//p')
		[ "$m" = "$(machine "$a")" ] || fail "$arch: the $a agent is for $m"
	done
	rm -rf "$x"
	lintian --fail-on error,warning --suppress-tags-from-file /dev/null "$deb" ||
		fail "lintian found problems in $deb"
	echo "package-check: $(basename "$deb"): architecture $arch, lintian clean"
done

# The units, as installed by the amd64 package.
x=$(mktemp -d /var/tmp/swarm-glue-check.XXXXXX)
trap 'rm -rf "$x"' EXIT
dpkg-deb -x "$target_dir/debian/swarm-glue_${version}_amd64.deb" "$x"
# verify checks that ExecStart exists: point it at the unpacked programs (this
# machine need not have the package installed); the lab checks the installed
# units under a real systemd too.
for unit in glue-manager.service glue-node-agent.service; do
	sed "s|=/usr/bin/glue-|=$x/usr/bin/glue-|" "$x/lib/systemd/system/$unit" >"$x/$unit"
	out=$(systemd-analyze verify --man=no "$x/$unit" 2>&1 || true)
	[ -z "$out" ] || fail "systemd-analyze verify $unit: $out"
	score=$(systemd-analyze security --offline=true "$x/$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: *//p')
	echo "package-check: $unit verified; systemd-analyze security: $score"
	echo "BENCH security.$unit=${score%% *}"
done
