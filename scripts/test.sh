#!/usr/bin/env bash
# The README's test command: installs everything, then runs the linters and every test
# tier (unit, component, integration, e2e). Integration and e2e tiers need root,
# network namespaces and QEMU; when they cannot run, the suite fails rather than skips.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

echo "== ruff" >&2
.venv/bin/ruff check launcher hypervisor dhcp testbed tests bench
.venv/bin/ruff format --check launcher hypervisor dhcp testbed tests bench
echo "== mypy --strict" >&2
.venv/bin/mypy
echo "== shellcheck" >&2
shellcheck entrypoint.sh scripts/*.sh .ci/run
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
