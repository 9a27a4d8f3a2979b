#!/usr/bin/env bash
# Builds the root filesystem of a lab node from Debian packages only and writes
# it as a tarball for `docker import`. The lab hashes this file to tag the image,
# so any change here rebuilds the image.
#
# usage: node-rootfs.sh OUT.tar
set -euo pipefail

out=${1:?usage: node-rootfs.sh OUT.tar}
suite=bookworm
mirror=${LAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=(
  systemd systemd-sysv dbus docker.io avahi-daemon avahi-utils libnss-mdns
  openssh-server openssh-client iptables iproute2 conntrack procps
  ca-certificates kmod less openssl
)

root=$(mktemp -d /var/tmp/lab-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

include=$(IFS=,; echo "${packages[*]}")
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >&2

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# Units that only make sense on real hardware or would fight the container runtime.
for unit in getty.target console-getty.service systemd-udevd.service \
            systemd-udevd-control.socket systemd-udevd-kernel.socket \
            systemd-modules-load.service sys-kernel-config.mount \
            systemd-remount-fs.service systemd-firstboot.service \
            apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
            fstrim.timer systemd-tmpfiles-clean.timer; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
in_root systemctl enable docker.service avahi-daemon.service ssh.service >&2

# Every node must get its own SSH host keys (the manager pins them per node),
# so none are baked into the image; they are made at first boot.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/lab-ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate this lab node's SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable lab-ssh-hostkeys.service >&2

# On a host, systemd makes every mount shared at boot; in a container it
# does not. Services with a mount namespace of their own (the agent's
# hardened unit) then never see the network namespaces dockerd mounts after
# they started. The lab's nodes are hosts: done here as systemd does it.
cat > "$root/etc/systemd/system/lab-shared-mounts.service" <<'UNIT'
[Unit]
Description=Share mounts with every service, as systemd does on a host
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target

[Service]
Type=oneshot
ExecStart=/bin/mount --make-rshared /

[Install]
WantedBy=sysinit.target
UNIT
in_root systemctl enable lab-shared-mounts.service >&2

# An empty machine-id makes systemd generate a fresh one per node at boot.
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"

# The lab network is the only link: avahi must not limit itself by rlimits
# that a container cannot set, and root logs in by key only.
sed -i -e 's/^rlimit-/#rlimit-/' "$root/etc/avahi/avahi-daemon.conf"
mkdir -p "$root/root/.ssh"
chmod 700 "$root/root/.ssh"

# The node's dockerd keeps its data on a volume (see lab), and uses the
# cgroupfs driver of the host.
mkdir -p "$root/etc/docker"
printf '{\n  "log-driver": "json-file",\n  "log-opts": {"max-size": "5m"}\n}\n' > "$root/etc/docker/daemon.json"

# No registry is reachable from the lab: a swarm task's start would wait
# out a DNS timeout (15-20 s measured) trying to pull its image first.
mkdir -p "$root/etc/systemd/system/docker.service.d"
printf '[Service]\nEnvironment=DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1\n' \
  > "$root/etc/systemd/system/docker.service.d/lab-offline.conf"

in_root apt-get clean >&2
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar --numeric-owner -C "$root" -cf "$out" .
