"""Subprocess entry for the restart tests and the benchmark: discover → plan → apply.

``python -m testbed.runner [--netns POD] --state-dir DIR --binding
bridge|masquerade [--guest-netns G] [--ports 80,443/udp] [--nics N] [--hold]`` prints
one JSON line ``{"changes": N, "plan": {...}}`` after applying; with ``--hold`` it then
sleeps (like a launcher supervising its VM) until it is killed. Without ``--netns`` it
works on the network namespace it runs in, as the launcher does in a pod (the
least-privilege tests start it with ``ip netns exec`` and no CAP_SYS_ADMIN, which
entering a named netns would need).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from launcher.errors import LauncherError
from launcher.network import PlanOptions, apply, discover, plan
from launcher.spec.model import (
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
    ap.add_argument(
        "--pause-before-remove",
        action="store_true",
        help="test hook: print PAUSED and sleep when apply is about to remove a pod address",
    )
    args = ap.parse_args()
    if args.pause_before_remove:
        from launcher.network.netlink import Netlink

        def paused(self: Netlink, name: str, address: object) -> None:
            print("PAUSED", flush=True)
            time.sleep(600)

        Netlink.del_address = paused  # type: ignore[assignment,method-assign]
    spec = build_spec(args.binding, args.nics, args.ports)
    try:
        pod = discover(netns=args.netns, state_dir=Path(args.state_dir), hostname="pod-host")
        the_plan = plan(spec, pod, PlanOptions(stand_in_netns=args.guest_netns))
        result = apply(the_plan, Path(args.state_dir), netns=args.netns)
    except LauncherError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}), flush=True)
        return err.exit_code
    print(json.dumps({"changes": result.changes, "plan": the_plan.to_dict()}), flush=True)
    if args.hold:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
