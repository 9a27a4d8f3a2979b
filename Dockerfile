# The glue-manager container image, for running swarm-glue on managers with
# Docker instead of the package (README: "Install on a real swarm"):
#
#   docker run -d --name swarm-glue \
#     -v /var/run/docker.sock:/var/run/docker.sock -v /var/run/dbus:/var/run/dbus \
#     -v /run/avahi-daemon:/run/avahi-daemon -v /var/run/systemd:/var/run/systemd \
#     --hostname "$(hostname -s)" -v swarm-glue:/mnt/data --network host \
#     --restart unless-stopped swarm-glue:0.1.0
#
# It is made from the Debian package of the same build, so the container and
# apt users run the same bits (the Rust toolchain is not in Debian's stable
# packages at the version this project needs):
#
#   packaging/build-deb.sh && packaging/build-image.sh
#
# BASE is any Debian image: build-image.sh imports one made with debootstrap,
# so no registry is needed. DEB_DIR holds the swarm-glue_*.deb files.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS unpack
# build-image.sh removes this stage's image after the build.
LABEL swarm-glue.stage=unpack
ARG DEB_DIR=.
COPY ${DEB_DIR}/swarm-glue_*.deb /tmp/debs/
# The package of this machine's architecture; the manager inside carries the
# agents of every architecture.
RUN set -eu; arch=$(dpkg --print-architecture); \
    set -- /tmp/debs/swarm-glue_*_"$arch".deb; \
    [ -f "$1" ] || { echo "no swarm-glue package for $arch in ${DEB_DIR}" >&2; exit 1; }; \
    dpkg-deb -x "$1" /out

FROM ${BASE}
# ssh reaches the nodes (agent install, re-addressing); nothing else is needed:
# Docker, D-Bus and journald are the host's, through the mounted sockets.
RUN set -eu; if ! command -v ssh >/dev/null; then \
      apt-get update; \
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssh-client; \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY --from=unpack /out/usr/bin/glue-manager /usr/bin/glue-manager
COPY --from=unpack /out/usr/lib/swarm-glue /usr/lib/swarm-glue
COPY --from=unpack /out/usr/share/man/man8/glue-manager.8.gz /usr/share/man/man8/
COPY --from=unpack /out/usr/share/doc/swarm-glue /usr/share/doc/swarm-glue
# State (keys, memory of the swarm) lives in the volume; options too, in
# /mnt/data/manager.toml if present (every option has a default).
ENV SWARM_GLUE_STATE_DIR=/mnt/data \
    SWARM_GLUE_CONFIG=/mnt/data/manager.toml \
    GLUE_LOG_JOURNALD=1
VOLUME /mnt/data
ENTRYPOINT ["/usr/bin/glue-manager"]
CMD ["run"]
