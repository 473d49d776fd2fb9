"""Whether br_netfilter is active in this network namespace, for the masquerade hairpin.

Where the node has loaded br_netfilter (most Kubernetes nodes), the kernel runs the
pod's NAT hooks for frames entering a bridge and bridges a packet DNATed back out of the
bridge it came in on without the IP postrouting hook, so the masquerade hairpin's SNAT
never happens (docs/network.md "Hairpin"). ``launcher.run`` calls
:func:`hairpin_blockers` once after wiring a masquerade NIC and logs a warning naming
the pod sysctls that fix it. Read-only: ``/proc/sys`` is read-only in the pod and the
launcher never changes these sysctls itself.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["hairpin_blockers", "BRNF_SYSCTLS"]

#: the per-netns switches that, set to 1, divert bridged IPv4/IPv6 frames through the
#: IP netfilter hooks
BRNF_SYSCTLS = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")


def hairpin_blockers(proc_sys: Path = Path("/proc/sys")) -> list[str]:
    """The br_netfilter sysctls set to 1 in this netns (empty: hairpin works, or
    br_netfilter is not loaded)."""
    on = []
    for name in BRNF_SYSCTLS:
        path = proc_sys / name.replace(".", "/")
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value == "1":
            on.append(name)
    return on
