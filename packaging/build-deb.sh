#!/usr/bin/env bash
# Builds the swarm-glue Debian packages: amd64, arm64 and armhf.
#
# usage: packaging/build-deb.sh [--version V] [ARCH...]
#
# Every package carries glue-manager and glue-node-agent for its own
# architecture, plus the agent of all three architectures under
# /usr/lib/swarm-glue/agents (a manager installs agents on a mixed swarm), so
# the agent is cross-built for all three whichever packages are asked for.
# --version overrides the package version (the upgrade test builds a newer one).
# Output: $CARGO_TARGET_DIR/debian/swarm-glue_<version>_<arch>.deb
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
target_dir=${CARGO_TARGET_DIR:-$top/target}
out=$target_dir/debian
version=
archs=()
while [ $# -gt 0 ]; do
	case "$1" in
	--version) version=${2:?--version needs a value}; shift 2 ;;
	amd64 | arm64 | armhf) archs+=("$1"); shift ;;
	*) echo "build-deb: unknown argument '$1' (architectures: amd64 arm64 armhf)" >&2; exit 2 ;;
	esac
done
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64 armhf)
if [ -z "$version" ]; then
	version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -n1)
fi

triple() {
	case "$1" in
	amd64) echo x86_64-unknown-linux-gnu ;;
	arm64) echo aarch64-unknown-linux-gnu ;;
	armhf) echo armv7-unknown-linux-gnueabihf ;;
	esac
}
gnu() {
	case "$1" in
	amd64) echo x86_64-linux-gnu ;;
	arm64) echo aarch64-linux-gnu ;;
	armhf) echo arm-linux-gnueabihf ;;
	esac
}
host_arch=$(dpkg --print-architecture)

for tool in dpkg-deb gzip objdump; do
	command -v "$tool" >/dev/null || { echo "build-deb: $tool is missing; make deps installs it" >&2; exit 1; }
done

# Where the release binaries of ARCH are (the host's build is target/release).
bindir() {
	if [ "$1" = "$host_arch" ]; then echo "$target_dir/release"; else echo "$target_dir/$(triple "$1")/release"; fi
}

commit=$(git -C "$top" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
export SWARM_GLUE_COMMIT=${SWARM_GLUE_COMMIT:-$commit}
for arch in amd64 arm64 armhf; do
	t=$(triple "$arch")
	if [ "$arch" = "$host_arch" ]; then
		cargo build --quiet --release -p glue-manager -p glue-node-agent
	else
		command -v "$(gnu "$arch")-gcc" >/dev/null ||
			{ echo "build-deb: $(gnu "$arch")-gcc is missing (cross compiler); make deps installs it" >&2; exit 1; }
		rustup target list --installed | grep -qx "$t" ||
			{ echo "build-deb: Rust target $t is missing (rustup target add $t); make deps installs it" >&2; exit 1; }
		upper=$(echo "$t" | tr 'a-z-' 'A-Z_')
		env "CARGO_TARGET_${upper}_LINKER=$(gnu "$arch")-gcc" \
			cargo build --quiet --release --target "$t" -p glue-manager -p glue-node-agent
	fi
done

# libc6 (>= the newest GLIBC_x.y symbol version the binaries need).
glibc_needed() {
	objdump -T "$@" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1
}

mkdir -p "$out"
for arch in "${archs[@]}"; do
	stage=$(mktemp -d "$target_dir/deb-stage.XXXXXX")
	trap 'rm -rf "$stage"' EXIT
	b=$(bindir "$arch")
	install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
		"$stage/etc/swarm-glue" "$stage/usr/share/man/man8" "$stage/usr/share/doc/swarm-glue" \
		"$stage/usr/share/lintian/overrides"
	install -m 755 "$b/glue-manager" "$b/glue-node-agent" "$stage/usr/bin/"
	for a in amd64 arm64 armhf; do
		install -D -m 755 "$(bindir "$a")/glue-node-agent" "$stage/usr/lib/swarm-glue/agents/$a/glue-node-agent"
	done
	install -m 644 "$top/systemd/glue-manager.service" "$top/systemd/glue-node-agent.service" "$stage/lib/systemd/system/"
	install -m 644 "$here/manager.toml" "$stage/etc/swarm-glue/manager.toml"
	for m in glue-manager glue-node-agent; do
		gzip -9n <"$here/man/$m.8" >"$stage/usr/share/man/man8/$m.8.gz"
	done
	install -m 644 "$here/debian/copyright" "$stage/usr/share/doc/swarm-glue/copyright"
	{
		echo "swarm-glue ($version) unstable; urgency=medium"
		echo
		echo "  * Built from commit $SWARM_GLUE_COMMIT."
		echo
		echo " -- swarm-glue maintainers <swarm-glue@example.invalid>  $(date -R -d @"${SOURCE_DATE_EPOCH:-$(git -C "$top" log -1 --format=%ct 2>/dev/null || date +%s)}")"
	} | gzip -9n >"$stage/usr/share/doc/swarm-glue/changelog.gz"
	install -m 644 "$here/debian/lintian-overrides" "$stage/usr/share/lintian/overrides/swarm-glue"
	install -m 755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$stage/DEBIAN/"
	echo /etc/swarm-glue/manager.toml >"$stage/DEBIAN/conffiles"
	libc=$(glibc_needed "$stage/usr/bin/glue-manager" "$stage/usr/bin/glue-node-agent")
	size=$(du -k -s --apparent-size "$stage" | cut -f1)
	sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@LIBC@/$libc/" -e "s/@SIZE@/$size/" \
		"$here/debian/control" >"$stage/DEBIAN/control"
	(cd "$stage" && find usr lib -type f -exec md5sum {} + | sort -k2) >"$stage/DEBIAN/md5sums"
	chmod 644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/control"
	deb="$out/swarm-glue_${version}_${arch}.deb"
	# Built aside and renamed: a kill never leaves a partial .deb under the real name.
	dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb.part" >/dev/null
	mv "$deb.part" "$deb"
	rm -rf "$stage"
	trap - EXIT
	echo "$deb"
done
