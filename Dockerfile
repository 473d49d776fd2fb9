# The VM pod's container image: the launcher in a venv plus the host tools it drives
# (QEMU, nftables, iproute2). Build: docker build -t virt-launcher .
# Debian packages are not version-pinned on purpose: bookworm's security updates are
# what we want, and a pinned version disappears from the mirror after each point release.

FROM debian:bookworm-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY launcher ./launcher
COPY hypervisor ./hypervisor
COPY dhcp ./dhcp
RUN python3 -m venv /opt/virt-launcher \
    && /opt/virt-launcher/bin/pip install --no-cache-dir /src \
    && /opt/virt-launcher/bin/python -m compileall -q -j 0 /opt/virt-launcher/lib

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv qemu-system-x86 nftables iproute2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/virt-launcher /opt/virt-launcher
COPY entrypoint.sh /entrypoint.sh
ENV PATH="/opt/virt-launcher/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["/entrypoint.sh"]
