#!/usr/bin/env bash
# Builds the container image swarm-glue:<version> from the Dockerfile at the
# top of the repository and the packages packaging/build-deb.sh made.
#
# usage: packaging/build-image.sh [--base IMAGE]
#
# Without --base, the base is a Debian bookworm image made here with
# debootstrap and `docker import` (no registry), tagged by the hash of its
# recipe so it is made once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
target_dir=${CARGO_TARGET_DIR:-$top/target}
docker=${LAB_DOCKER:-/usr/bin/docker}
[ -x "$docker" ] || docker=docker
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)
base=
while [ $# -gt 0 ]; do
	case "$1" in
	--base) base=${2:?--base needs an image}; shift 2 ;;
	*) echo "build-image: unknown argument '$1'" >&2; exit 2 ;;
	esac
done

arch=$(dpkg --print-architecture)
deb="$target_dir/debian/swarm-glue_${version}_${arch}.deb"
[ -f "$deb" ] || { echo "build-image: $deb is missing; run packaging/build-deb.sh first" >&2; exit 1; }

# The base: Debian's minimal system with the ssh client, imported.
suite=bookworm
recipe="debootstrap --variant=minbase --include=openssh-client,ca-certificates $suite"
if [ -z "$base" ]; then
	base="swarm-glue-base/debian:$suite-$(printf '%s' "$recipe" | sha256sum | cut -c1-12)"
	if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
		root=$(mktemp -d /var/tmp/swarm-glue-base.XXXXXX)
		trap 'rm -rf --one-file-system "$root"' EXIT
		echo "build-image: making $base with debootstrap" >&2
		# shellcheck disable=SC2086
		${recipe%% *} ${recipe#* } "$root" "${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
		rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
		tar -C "$root" -c . | "$docker" import - "$base" >/dev/null
		rm -rf --one-file-system "$root"
		trap - EXIT
	fi
fi

ctx=$(mktemp -d /var/tmp/swarm-glue-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
cp "$deb" "$ctx/"
"$docker" build -q -f "$top/Dockerfile" --build-arg "BASE=$base" \
	--label "org.opencontainers.image.version=$version" \
	-t "swarm-glue:$version" "$ctx" >/dev/null
"$docker" image prune -f --filter label=swarm-glue.stage=unpack >/dev/null
echo "swarm-glue:$version (base $base)"
