"""``/metrics``: the latest status snapshot as Prometheus text, via prometheus-client.

Called by the status server. A custom collector on the launcher's own
``CollectorRegistry`` (never the global default registry) turns one
:class:`~launcher.status.model.StatusSnapshot` into metric families, so the numbers in
``/metrics`` and ``/status`` always come from the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hypervisor.machine import VmState

from .doctor import VERDICTS
from .model import StatusSnapshot

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_P = "virt_launcher_"
_V4_TYPES = ("offers", "acks", "naks", "declines", "releases", "informs")


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: StatusSnapshot | None = None

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s is None:
            return
        ready = GaugeMetricFamily(_P + "ready", "1 when network, DHCP and hypervisor are ready")
        ready.add_metric([], 1.0 if s.ready else 0.0)
        yield ready
        ttr = GaugeMetricFamily(
            _P + "time_to_ready_seconds", "Seconds from launcher start to first ready"
        )
        if s.launcher.time_to_ready_s is not None:
            ttr.add_metric([], s.launcher.time_to_ready_s)
        yield ttr
        rss = GaugeMetricFamily(
            _P + "resident_memory_bytes", "Resident memory of a process", labels=["process"]
        )
        cpu = CounterMetricFamily(
            _P + "cpu_seconds", "User+system CPU time of a process", labels=["process"]
        )
        rss.add_metric(["launcher"], s.launcher.rss_bytes)
        cpu.add_metric(["launcher"], s.launcher.cpu_s)
        hv = s.hypervisor
        if hv is not None and hv.rss_bytes is not None:
            rss.add_metric(["vmm"], hv.rss_bytes)
        if hv is not None and hv.cpu_s is not None:
            cpu.add_metric(["vmm"], hv.cpu_s)
        yield rss
        yield cpu
        lag = GaugeMetricFamily(_P + "event_loop_lag_seconds", "Last measured event loop lag")
        lag.add_metric([], s.launcher.loop_lag_s)
        yield lag
        up = GaugeMetricFamily(_P + "hypervisor_up", "1 while the VMM runs the guest")
        up.add_metric([], 1.0 if hv is not None and hv.state == VmState.RUNNING.value else 0.0)
        yield up
        state = GaugeMetricFamily(
            _P + "hypervisor_state", "1 for the current VM state", labels=["kind", "state"]
        )
        if hv is not None:
            for st in VmState:
                state.add_metric([hv.kind, st.value], 1.0 if hv.state == st.value else 0.0)
        yield state
        dhcp = CounterMetricFamily(
            _P + "dhcp_messages",
            "DHCP messages sent (v4 by reply type, v6 by kind) and RAs",
            labels=["interface", "family", "type"],
        )
        names = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
        nic = {
            n: CounterMetricFamily(
                _P + f"guest_nic_{n}",
                f"Guest NIC {n.replace('_', ' ')} (guest side)",
                labels=["interface", "tap"],
            )
            for n in names
        }
        for i in s.interfaces:
            for t in _V4_TYPES:
                dhcp.add_metric([i.name, "ipv4", t.rstrip("s")], getattr(i.dhcp, t))
            for k, v in sorted(i.dhcp.v6.items()):
                dhcp.add_metric([i.name, "ipv6", k], v)
            dhcp.add_metric([i.name, "ipv6", "router_advert"], i.dhcp.router_adverts)
            if i.traffic is not None:
                for n in names:
                    nic[n].add_metric([i.name, i.tap or ""], getattr(i.traffic, n))
        yield dhcp
        yield from nic.values()
        yield from _kubevirt(s)
        verdict = GaugeMetricFamily(
            _P + "network_verdict",
            "The network doctor's verdict per guest NIC: 1 for the current one",
            labels=["interface", "verdict"],
        )
        for i in s.interfaces:
            if i.diagnosis is not None:
                for word in VERDICTS:
                    current = 1.0 if i.diagnosis.verdict == word else 0.0
                    verdict.add_metric([i.name, word], current)
        yield verdict


#: KubeVirt's per-vNIC counters (docs/status.md lists their definitions side by side):
#: name suffix → (help, index into the guest-side traffic/errors).
_KV_NET = (
    ("receive_bytes_total", "Total network traffic received in bytes.", "rx_bytes"),
    ("transmit_bytes_total", "Total network traffic transmitted in bytes.", "tx_bytes"),
    ("receive_packets_total", "Total network traffic received packets.", "rx_packets"),
    ("transmit_packets_total", "Total network traffic transmitted packets.", "tx_packets"),
    ("receive_errors_total", "Total network received error packets.", 0),
    ("transmit_errors_total", "Total network transmitted error packets.", 1),
    (
        "receive_packets_dropped_total",
        "The total number of rx packets dropped on vNIC interfaces.",
        2,
    ),
    (
        "transmit_packets_dropped_total",
        "The total number of tx packets dropped on vNIC interfaces.",
        3,
    ),
)


def _kubevirt(s: StatusSnapshot) -> Iterator[Metric]:
    """The series KubeVirt dashboards and alerts use, under KubeVirt's names and labels
    (``namespace``, ``name``, ``interface``; counts from the guest's side, as libvirt's)."""
    namespace, _, name = (s.vm or "/").partition("/")
    for suffix, help_text, field in _KV_NET:
        # prometheus-client adds "_total" to counter samples itself
        family = CounterMetricFamily(
            "kubevirt_vmi_network_" + suffix.removesuffix("_total"),
            help_text,
            labels=["namespace", "name", "interface"],
        )
        for i in s.interfaces:
            if i.traffic is None:
                continue
            value = getattr(i.traffic, field) if isinstance(field, str) else i.errors[field]
            family.add_metric([namespace, name, i.name], value)
        yield family
    vnic = GaugeMetricFamily(
        "kubevirt_vmi_vnic_info",
        "Details of VirtualMachineInstance (VMI) vNIC interfaces, such as vNIC name, binding "
        "type, network name, and binding name for each vNIC of a running instance.",
        labels=["name", "namespace", "vnic_name", "binding_type", "network", "binding_name"],
    )
    addresses = GaugeMetricFamily(
        "kubevirt_vmi_status_addresses",
        "The addresses of a VirtualMachineInstance. This metric provides the address of an "
        "available network interface associated with the VMI in the 'address' label, and "
        "about the type of address, such as internal IP, in the 'type' label.",
        labels=["namespace", "name", "network_name", "address", "type"],
    )
    for i in s.interfaces:
        vnic.add_metric([name, namespace, i.name, "core", i.network or "", i.binding], 1.0)
        for address in i.ip_addresses:
            addresses.add_metric([namespace, name, i.name, address, "InternalIP"], 1.0)
    yield vnic
    yield addresses


class Metrics:
    """The launcher's own registry; :meth:`render` formats one snapshot."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _SnapshotCollector()
        self.registry.register(self._collector)

    def render(self, snapshot: StatusSnapshot) -> bytes:
        """Prometheus text exposition of ``snapshot``."""
        self._collector.snapshot = snapshot
        return generate_latest(self.registry)
