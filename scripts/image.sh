#!/usr/bin/env bash
# Builds the launcher's container image with podman, without any image registry and
# without a package index inside the build (docs/image.md). Run as root on Debian 12
# after scripts/install.sh (podman, buildah, runc, mmdebstrap, the .venv).
#
#   image.sh base     debian:bookworm-slim made here with mmdebstrap from Debian's archive
#                     (variant minbase + the slim image's dpkg excludes and apt settings),
#                     imported as docker.io/library/debian:bookworm-slim so the Dockerfile's
#                     FROM resolves offline. Skipped when an image of that name exists that
#                     this script did not make (a real one pulled from a registry) or that it
#                     made from the same recipe (label io.virt-launcher.base-recipe).
#   image.sh wheels   the launcher and its runtime dependencies as wheels in build/wheels/,
#                     built on the host with the host's pip configuration (its index, proxy
#                     and CA): the build installs them with --no-index, TLS is never weakened.
#   image.sh [build]  base + wheels + `podman build --isolation=chroot`; the image is tagged
#                     localhost/virt-launcher:<first 16 hex of a sha256 over every input>
#                     (and :latest). If that tag exists nothing is built. Prints the tag.
#                     Tags older than a day and unused build stages are removed then.
#   image.sh tag      prints the tag the current inputs give (needs the base image).
#
# Podman settings come from scripts/containers.conf through CONTAINERS_CONF (unless it is
# already set), so the host's /etc/containers is not changed. Builds are serialized by a
# lock. Progress goes to stderr; only the tag goes to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=localhost/virt-launcher
BASE=docker.io/library/debian:bookworm-slim
BASE_LABEL=io.virt-launcher.base-recipe
INPUTS_LABEL=io.virt-launcher.inputs
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
WHEELS=build/wheels
LOCK=${VL_IMAGE_LOCK:-/tmp/virt-launcher-image.lock}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}

say() { echo "image.sh: $*" >&2; }

# --- base: debian:bookworm-slim from Debian's archive -------------------------------------
# What makes the official slim image (debuerreotype): minbase, docs/man/locales excluded
# by dpkg, apt told to keep no caches and fetch no translations, no service starts.
SOURCES="Types: deb
URIs: $MIRROR/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $MIRROR/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"
# shellcheck disable=SC2016 # "$1" in a hook is the chroot, expanded by mmdebstrap's shell
BASE_ARGS=(
  --variant=minbase --mode=root --format=tar
  # /bin, /lib, /sbin as symlinks into /usr made directly (usr-is-merged), not by the
  # usrmerge package, which would pull perl into the image as it is not in the real one.
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/linda/*'
  --dpkgopt='path-exclude=/usr/share/lintian/overrides/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/help/*/*'
  --dpkgopt='path-include=/usr/share/help/C/*'
  --dpkgopt='force-unsafe-io'
  --aptopt='Acquire::Languages "none"'
  --aptopt='Acquire::GzipIndexes "true"'
  --aptopt='Apt::AutoRemove::SuggestsImportant "false"'
  --aptopt='Dir::Cache::pkgcache ""'
  --aptopt='Dir::Cache::srcpkgcache ""'
  --customize-hook='printf "#!/bin/sh\nexit 101\n" >"$1/usr/sbin/policy-rc.d" && chmod 0755 "$1/usr/sbin/policy-rc.d"'
  --customize-hook='mv "$1/etc/apt/sources.list.d/0000debian.sources" "$1/etc/apt/sources.list.d/debian.sources"'
)

# The image config of the official one: its PATH (podman kube play supplies none) and CMD.
IMPORT_CHANGES=(
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  --change 'CMD ["bash"]'
)

base_recipe_hash() {
  printf '%s\n' "${BASE_ARGS[@]}" "$SOURCES" "${IMPORT_CHANGES[@]}" | sha256sum | cut -c1-16
}

label_of() { # image label
  podman image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true
}

base() {
  local want have old="" work
  want=$(base_recipe_hash)
  if podman image exists "$BASE"; then
    have=$(label_of "$BASE" "$BASE_LABEL")
    if [ -z "$have" ] || [ "$have" = "<no value>" ]; then
      say "$BASE exists and was not made here: using it"
      return 0
    fi
    if [ "$have" = "$want" ]; then
      return 0
    fi
    say "$BASE was made from another recipe ($have): rebuilding"
    old=$(podman image inspect --format '{{.Id}}' "$BASE")
  fi
  say "building $BASE with mmdebstrap from $MIRROR (recipe $want)"
  work=$(mktemp -d /var/tmp/vl-base.XXXXXX)
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" RETURN
  printf '%s' "$SOURCES" >"$work/debian.sources"
  if ! timeout 1200 mmdebstrap "${BASE_ARGS[@]}" bookworm "$work/rootfs.tar" "$work/debian.sources" \
    >"$work/mmdebstrap.log" 2>&1; then
    tail -n 30 "$work/mmdebstrap.log" >&2
    say "mmdebstrap failed"
    exit 1
  fi
  podman import --quiet "${IMPORT_CHANGES[@]}" --change "LABEL $BASE_LABEL=$want" \
    --message "debian:bookworm-slim made by scripts/image.sh (mmdebstrap)" \
    "$work/rootfs.tar" "$BASE" >/dev/null
  if [ -n "$old" ]; then # the superseded base, unless images built on it still use it
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}

# --- wheels: the launcher + its runtime dependencies, built with the host's pip --------------
wheels() {
  local py=.venv/bin/python
  if [ ! -x "$py" ]; then
    say ".venv is missing: run scripts/install.sh first"
    exit 2
  fi
  rm -rf "$WHEELS" build/lib build/bdist.*
  mkdir -p "$WHEELS"
  say "wheels of the launcher and its dependencies -> $WHEELS"
  # -qq: errors only (the host's pip settings make it warn about every absent local index)
  timeout 900 "$py" -m pip wheel -qq --wheel-dir "$WHEELS" . >&2
  rm -rf build/lib build/bdist.*
  # pip itself, run from its wheel in the build, so the image's venv needs no ensurepip.
  timeout 300 "$py" -m pip download -qq --only-binary=:all: --no-deps --dest "$WHEELS" pip >&2
}

# --- the image ----------------------------------------------------------------------------
inputs_hash() {
  local base_key
  base_key=$(label_of "$BASE" "$BASE_LABEL")
  if [ -z "$base_key" ] || [ "$base_key" = "<no value>" ]; then
    base_key=$(podman image inspect --format '{{.Id}}' "$BASE")
  fi
  {
    echo "base $base_key"
    # Everything the image is made of: the build files, and the sources its wheel is built from.
    find Dockerfile .dockerignore entrypoint.sh pyproject.toml README.md scripts/image.sh \
      launcher hypervisor dhcp -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
}

tag() {
  echo "$REPO:$(inputs_hash)"
}

build() {
  local t started
  base
  t=$(tag)
  if podman image exists "$t"; then
    say "$t is up to date (cached)"
    echo "$t"
    return 0
  fi
  started=$(date +%s)
  wheels
  say "podman build -> $t"
  timeout 1800 podman build --isolation=chroot --pull=never --layers --quiet \
    --label "$INPUTS_LABEL=${t##*:}" --tag "$t" --tag "$REPO:latest" --file Dockerfile . >&2
  say "built $t in $(($(date +%s) - started)) s ($(podman image inspect --format '{{.Size}}' "$t") bytes)"
  prune "$t"
  echo "$t"
}

# Each change of the sources leaves a tag behind: drop tags older than a day (another
# worktree's current image is younger) and the build stages no tag uses any more; an
# image a container still uses is kept (podman refuses).
prune() {
  local old
  for old in $(podman images --filter "reference=$REPO" --filter until=24h \
    --format '{{.Repository}}:{{.Tag}}'); do
    if [ "$old" != "$1" ] && [ "$old" != "$REPO:latest" ]; then
      podman rmi "$old" >/dev/null 2>&1 || true
    fi
  done
  podman image prune --force >/dev/null 2>&1 || true
}

if [ "$(id -u)" -ne 0 ]; then
  say "run as root (podman build, mmdebstrap)"
  exit 2
fi
for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run scripts/install.sh"; exit 2; }
done
exec 9>"$LOCK"
flock -w 1800 9 || { say "another build holds $LOCK"; exit 1; }
case "${1:-build}" in
  base) base ;;
  wheels) wheels ;;
  build) build ;;
  tag) tag ;;
  *) say "usage: image.sh [base|wheels|build|tag]"; exit 2 ;;
esac
