"""Spec loading cost: CLI cold start, in-process parse(), and import RSS vs peers.

Run: .venv/bin/python bench/spec.py [--runs N]
Prints one table row per measurement. Peers measured in the same run:
- cold start of ``virt-launcher validate`` (``cli.main`` in a fresh interpreter) vs
  the interpreter floor (``python -c "import yaml"``: what any Python launcher pays);
- ``parse()`` of each bundled example vs libyaml decoding the same file;
- RSS after ``import launcher.spec`` vs after ``import jsonschema`` (the schema library
  one would otherwise validate with) in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python")


_HWM = (
    "; import sys; sys.stdout.flush(); "
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], "
    "file=sys.stderr)"
)


def cold(code: str, runs: int) -> tuple[float, int]:
    """Median wall time (ms) and peak RSS (KiB) of ``python -c code`` over ``runs`` runs.

    The peak comes from the child's own /proc/self/status VmHWM: wait4's ru_maxrss is
    useless here because Linux carries the parent's high-water mark across fork+exec.
    """
    times, rss = [], []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            [PY, "-c", code + _HWM], capture_output=True, text=True, timeout=60, check=True
        )
        times.append((time.perf_counter() - start) * 1000)
        rss.append(int(proc.stderr.strip().splitlines()[-1]))
    return statistics.median(times), max(rss)


def per_call_us(fn: object, arg: object, budget_s: float = 0.3) -> float:
    call = fn  # type: ignore[assignment]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s and n < 100_000:
        call(arg)  # type: ignore[operator]
        n += 1
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    from launcher.spec import parse

    demo = str(ROOT / "examples/demo-vm.yaml")
    print("| measurement | launcher | peer | peer is |")
    print("| --- | --- | --- | --- |")
    ms, kib = cold(
        f"from launcher.cli import main; assert main(['validate', '--spec', {demo!r}]) == 0",
        runs,
    )
    floor_ms, floor_kib = cold("import yaml", runs)
    print(
        f"| cold `validate` demo-vm (median of {runs}) | {ms:.0f} ms, {kib / 1024:.1f} MiB "
        f"| {floor_ms:.0f} ms, {floor_kib / 1024:.1f} MiB | python -c 'import yaml' |"
    )
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        text = path.read_text()
        doc = yaml.load(text, Loader=loader)  # noqa: S506 - safe loader
        ours = per_call_us(parse, doc)
        peer = per_call_us(lambda t: yaml.load(t, Loader=loader), text)  # noqa: S506
        print(f"| parse() {path.name} | {ours:.0f} µs | {peer:.0f} µs | libyaml decode |")
    _, ours_kib = cold("import launcher.spec", 1)
    _, peer_kib = cold("import jsonschema", 1)
    print(
        f"| peak RSS after import | {ours_kib / 1024:.1f} MiB (launcher.spec) "
        f"| {peer_kib / 1024:.1f} MiB | import jsonschema |"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
