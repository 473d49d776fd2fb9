#!/usr/bin/env bash
# Installs everything the launcher, its tests and its benchmarks need on Debian 12:
# Debian packages (real DHCP clients, QEMU, nftables, perfdhcp, dnsmasq, ...) and a
# Python venv in .venv with the package installed in editable mode. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc make
  iproute2 nftables iputils-ping ethtool socat tcpdump tshark
  isc-dhcp-client dhcpcd5 udhcpc busybox wide-dhcpv6-client ndisc6 systemd
  dnsmasq-base kea-admin wrk iperf3
  qemu-system-x86 qemu-utils cpio
  shellcheck
  dpkg-dev libc6-dev bzip2 xz-utils debian-archive-keyring curl  # testbed/guest build + e2e
  mmdebstrap e2fsprogs  # testbed/guest/debian.py: the Debian cloud guest (built below)
  chromium fonts-liberation  # e2e: the status page rendered headless
  podman buildah runc catatonit mmdebstrap containernetworking-plugins  # the image + tests/container
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (it installs Debian packages)" >&2
  exit 2
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own interpreter (the one the image ships; built with PGO, ~1.5x faster start-up
# than a plain source build) even when another python3 (pyenv…) comes first on PATH.
PY=${PYTHON:-/usr/bin/python3}
home=$(dirname "$(readlink -f "$(command -v "$PY")")")
if [ -f .venv/pyvenv.cfg ] && ! grep -qx "home = $home" .venv/pyvenv.cfg; then
  echo "install.sh: .venv was made by another interpreter; re-creating it with $PY" >&2
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
log=$(mktemp)
# editable_mode=compat: a plain .pth path entry instead of setuptools' import-hook finder,
# which costs ~20 ms of pathlib/importlib imports at every interpreter start.
if ! .venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "install.sh: pip install failed" >&2
  exit 1
fi
rm -f "$log"
# Byte-compile the packages as the image does (Dockerfile: compileall): with
# PYTHONDONTWRITEBYTECODE set (it is on some machines) every launcher start would
# otherwise compile its ~90 modules again (≈40 ms, more memory).
.venv/bin/python -m compileall -q -j 0 launcher hypervisor dhcp >/dev/null
# ...and the code @dataclass generates for the launcher's models (launcher/dataclass_code.py:
# ≈40 ms of each start-up), as the image does too.
.venv/bin/python -m launcher.dataclass_code >/dev/null
# The e2e tests' guest (docs/guest.md): a few minutes cold, cached afterwards, so the
# first e2e test does not spend its timeout building it.
if ! .venv/bin/python -m testbed.guest.build >/dev/null; then
  echo "install.sh: building the test guest failed (python -m testbed.guest.build)" >&2
  exit 1
fi
# The container image (docs/image.md) and tests/container: scripts/image.sh makes
# debian:bookworm-slim with mmdebstrap, the wheels with this .venv's pip, and builds the
# image with podman (runc, CNI). Cached by a hash of its inputs: a few minutes cold, about
# a second when nothing changed. podman reads scripts/containers.conf through
# CONTAINERS_CONF: nothing under /etc/containers is changed. The packages above add
# podman's own files (/etc/containers/registries.conf, policy.json, a podman.socket unit
# that nothing starts here); the images live in podman's store, /var/lib/containers.
if ! bash scripts/image.sh build >/dev/null; then
  echo "install.sh: building the container image failed (bash scripts/image.sh)" >&2
  exit 1
fi
# The slow e2e tier's Debian cloud guest (testbed/guest/debian.py, docs/guest.md): a
# bookworm disk made by mmdebstrap from Debian's archive, about 75 s cold on a quiet
# 2-core machine (longer under load), cached afterwards; built here so that
# tests/e2e/test_debian_guest.py does not spend its timeout on it.
if ! .venv/bin/python -m testbed.guest.debian >/dev/null; then
  echo "install.sh: building the Debian guest failed (python -m testbed.guest.debian)" >&2
  exit 1
fi
echo "install.sh: ready (.venv)" >&2
