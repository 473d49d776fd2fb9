#!/usr/bin/env bash
# The README's main command: installs everything, then shows the launcher at work on the
# bundled examples: every manifest is validated, and the demo VM's plan is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

launcher=.venv/bin/virt-launcher
echo "== validate every bundled example" >&2
for f in examples/*.yaml; do
  printf '%-48s ' "$f"
  "$launcher" validate --spec "$f"
done
echo "== plan for examples/demo-vm.yaml" >&2
"$launcher" plan --spec examples/demo-vm.yaml
