"""Subprocess entry for the restart tests and the benchmark: discover → plan → apply.

``python -m testbed.runner [--netns POD] --state-dir DIR --binding
bridge|masquerade [--guest-netns G] [--ports 80,443/udp] [--nics N] [--hold]`` prints
one JSON line ``{"changes": N, "plan": {...}}`` after applying; with ``--hold`` it then
sleeps (like a launcher supervising its VM) until it is killed. Without ``--netns`` it
works on the network namespace it runs in, as the launcher does in a pod (the
least-privilege tests start it with ``ip netns exec`` and no CAP_SYS_ADMIN, which
entering a named netns would need).

Test-only fault injection (``testbed.faults``): ``--kill-at N`` kills the process with
SIGKILL, ``--fail-at N`` raises a NetworkError, ``--fill-state-at N`` fills the state
dir's (small, test) file system, each just before apply's N-th pod-changing step;
``--count-steps`` adds the list of steps of a clean apply to the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from launcher.network.netlink import lean_import

lean_import()  # the launcher's netlink child imports pyroute2 this way too (faster start)

from launcher.errors import LauncherError  # noqa: E402
from launcher.network import PlanOptions, apply, discover, plan  # noqa: E402
from launcher.spec.model import (  # noqa: E402
    Bridge,
    Interface,
    Masquerade,
    MultusNetwork,
    Network,
    PodNetwork,
    Port,
    Protocol,
    SourceShape,
    VmSpec,
)
from testbed.faults import Faults, armed  # noqa: E402


def build_spec(binding: str, nics: int, ports: str, istio: bool = False) -> VmSpec:
    """A VmSpec with ``nics`` interfaces of ``binding`` (the first on the pod network)."""
    parsed = []
    for item in filter(None, ports.split(",")):
        num, _, proto = item.partition("/")
        parsed.append(Port(int(num), Protocol(proto.upper() or "TCP")))
    interfaces = []
    networks = []
    for i in range(nics):
        name = "default" if i == 0 else f"sec{i}"
        b = Bridge() if binding == "bridge" else Masquerade(ports=tuple(parsed))
        interfaces.append(Interface(name=name, binding=b))
        source = PodNetwork() if i == 0 else MultusNetwork(network_name=f"ns/sec{i}")
        networks.append(Network(name=name, source=source))
    annotations = (("sidecar.istio.io/inject", "true"),) if istio else ()
    return VmSpec(
        shape=SourceShape.VIRTINK,
        name="vm1",
        namespace="nwtest",
        hostname="vm1",
        interfaces=tuple(interfaces),
        networks=tuple(networks),
        annotations=annotations,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--netns", help="a name under /run/netns (default: this process's netns)")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--binding", choices=["bridge", "masquerade"], required=True)
    ap.add_argument("--guest-netns")
    ap.add_argument("--ports", default="")
    ap.add_argument("--nics", type=int, default=1)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--kill-at", type=int, help="test only: SIGKILL before apply step N")
    ap.add_argument("--fail-at", type=int, help="test only: fail before apply step N")
    ap.add_argument("--fill-state-at", type=int, help="test only: fill the state dir at step N")
    ap.add_argument("--count-steps", action="store_true", help="list apply's steps")
    args = ap.parse_args()
    state_dir = Path(args.state_dir)
    faults = Faults(
        kill_at=args.kill_at, fail_at=args.fail_at, fill_at=args.fill_state_at, state_dir=state_dir
    )
    spec = build_spec(args.binding, args.nics, args.ports)
    try:
        pod = discover(netns=args.netns, state_dir=state_dir, hostname="pod-host")
        the_plan = plan(spec, pod, PlanOptions(stand_in_netns=args.guest_netns))
        with armed(faults):
            result = apply(the_plan, state_dir, netns=args.netns)
    except LauncherError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
        return err.exit_code
    out: dict[str, object] = {"changes": result.changes, "plan": the_plan.to_dict()}
    if args.count_steps:
        out["steps"] = faults.steps
    print(json.dumps(out), flush=True)
    if args.hold:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
