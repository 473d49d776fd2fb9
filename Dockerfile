# The VM pod's container image: the launcher in a venv plus what it drives (QEMU,
# nftables, iproute2), a static /bin/busybox (the manifest's init containers run it
# inside disk and kernel images that may have no shell), and the VMM user (uid/gid 107,
# "qemu" as in KubeVirt). Runs with a
# read-only root file system: all state is under /var/run/virt-launcher (an emptyDir).
# Build: bash scripts/image.sh (docs/image.md). It first builds the launcher and its
# dependencies as wheels into build/wheels/ on the host, with the host's pip settings:
# nothing is fetched from a package index inside the build.
# Debian packages are not version-pinned on purpose: bookworm's security updates are
# what we want, and a pinned version disappears from the mirror after each point release.

FROM debian:bookworm-slim AS runtime
# The VMM user first, so no package's postinst can take uid/gid 107.
# hadolint ignore=DL3008
RUN groupadd --system --gid 107 qemu \
    && useradd --system --uid 107 --gid qemu --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin qemu \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 qemu-system-x86 nftables iproute2 busybox-static \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 0755 /run/virt-launcher

FROM runtime AS venv
COPY build/wheels /wheels
# pip runs from its own wheel ("python pip-X.whl/pip"): the venv gets no pip, no setuptools.
RUN python3 -m venv --without-pip /opt/virt-launcher \
    && set -- /wheels/pip-*.whl \
    && /opt/virt-launcher/bin/python "$1/pip" install --no-cache-dir \
        --no-index --find-links /wheels --no-compile virt-launcher \
    && /opt/virt-launcher/bin/python -m compileall -q -j 0 /opt/virt-launcher/lib \
    && /opt/virt-launcher/bin/python -m launcher.dataclass_code

FROM runtime
COPY --from=venv /opt/virt-launcher /opt/virt-launcher
COPY entrypoint.sh /entrypoint.sh
ENV PATH="/opt/virt-launcher/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["/entrypoint.sh"]
