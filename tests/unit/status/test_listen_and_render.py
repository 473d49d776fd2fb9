"""Pure parts of launcher/status: --status-listen parsing, JSON rendering, metrics text."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import UsageError
from launcher.status.metrics import Metrics
from launcher.status.model import (
    Condition,
    DhcpCounters,
    Event,
    HypervisorStatus,
    InterfaceStatus,
    LauncherStatus,
    Lease,
    StatusSnapshot,
    Traffic,
)
from launcher.status.render import rfc3339, status_json
from launcher.status.server import Listen, parse_listen


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:8186", Listen(host="127.0.0.1", port=8186)),
        (":9000", Listen(host="127.0.0.1", port=9000)),
        ("[::1]:8186", Listen(host="::1", port=8186)),
        ("localhost:1", Listen(host="localhost", port=1)),
        ("127.0.0.2:0", Listen(host="127.0.0.2", port=0)),
        ("unix:/run/vl/status.sock", Listen(path=Path("/run/vl/status.sock"))),
        ("/run/vl/status.sock", Listen(path=Path("/run/vl/status.sock"))),
    ],
)
def test_parse_listen_accepts_loopback_and_unix(text: str, want: Listen) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.244.1.5:8186", "'10.244.1.5' is not a loopback address"),
        ("0.0.0.0:8186", "'0.0.0.0' is not a loopback address"),
        ("[::]:8186", "'::' is not a loopback address"),
        ("example.com:80", "'example.com' is not an IP address"),
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("127.0.0.1:99999", "'127.0.0.1:99999' is not HOST:PORT"),
        ("unix:", "names no unix socket path"),
    ],
)
def test_parse_listen_refuses_anything_else(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        parse_listen(text)
    assert err.value.exit_code == 2


def test_rfc3339() -> None:
    assert rfc3339(0.25) == "1970-01-01T00:00:00.250Z"
    assert rfc3339(1_800_000_000.0) == "2027-01-15T08:00:00.000Z"


def snapshot(*, running: bool) -> StatusSnapshot:
    iface = InterfaceStatus(
        name="pod",
        interface_name=None,
        mac="02:00:00:00:00:01",
        ip_address="10.244.1.5",
        ip_addresses=("10.244.1.5", "fd00::5"),
        info_source="domain, dhcp-lease",
        queue_count=2,
        link_state="up",
        binding="bridge",
        pod_interface="eth0",
        tap="vltap0",
        bridge="vlbr0",
        leases=(Lease("ipv4", "10.244.1.5", "02:00:00:00:00:01", 10.0, "ack"),),
        dhcp=DhcpCounters(offers=3, acks=2, naks=1, v6={"replies": 4}, router_adverts=7),
        traffic=Traffic(rx_bytes=1000, tx_bytes=2000, rx_packets=10, tx_packets=20),
    )
    return StatusSnapshot(
        time=100.0,
        vm="ns/vm",
        phase="Running" if running else "Starting",
        ready=running,
        not_ready_reason=None if running else "HypervisorRunning: Created",
        conditions=(Condition("NetworkApplied", True, "Applied", "", 5.0),),
        launcher=LauncherStatus(1, 0.0, 100.0, 30 << 20, 1.5, 0.001, 12.5 if running else None),
        hypervisor=HypervisorStatus(
            "qemu", 42, "Running" if running else "Created", 50.0 if running else None, 3.0, 1 << 28
        ),
        interfaces=(iface,),
        nftables_digest="sha256:" + "0" * 64,
        events=(Event(10.0, "dhcp4", "ack", "", "vlbr0", "02:00:00:00:00:01", "10.244.1.5"),),
    )


def test_status_json_uses_kubevirt_names() -> None:
    doc = status_json(snapshot(running=True))
    iface = doc["interfaces"][0]
    for key in ("name", "interfaceName", "mac", "ipAddress", "ipAddresses", "infoSource"):
        assert key in iface
    assert (iface["queueCount"], iface["linkState"]) == (2, "up")
    assert iface["leases"][0]["handedOutAt"] == "1970-01-01T00:00:10.000Z"
    assert doc["conditions"][0]["status"] == "True"
    assert doc["events"][0] == {
        "time": "1970-01-01T00:00:10.000Z",
        "source": "dhcp4",
        "kind": "ack",
        "iface": "vlbr0",
        "mac": "02:00:00:00:00:01",
        "address": "10.244.1.5",
    }


def test_metrics_text() -> None:
    metrics = Metrics()
    lines = set(metrics.render(snapshot(running=True)).decode().splitlines())
    assert (
        'virt_launcher_dhcp_messages_total{family="ipv4",interface="pod",type="offer"} 3.0' in lines
    )
    assert (
        'virt_launcher_dhcp_messages_total{family="ipv4",interface="pod",type="nak"} 1.0' in lines
    )
    assert (
        'virt_launcher_dhcp_messages_total{family="ipv6",interface="pod",type="replies"} 4.0'
        in lines
    )
    assert (
        'virt_launcher_dhcp_messages_total{family="ipv6",interface="pod",type="router_advert"} 7.0'
        in lines
    )
    assert 'virt_launcher_guest_nic_rx_bytes_total{interface="pod",tap="vltap0"} 1000.0' in lines
    assert 'virt_launcher_guest_nic_tx_packets_total{interface="pod",tap="vltap0"} 20.0' in lines
    assert "virt_launcher_hypervisor_up 1.0" in lines
    assert "virt_launcher_time_to_ready_seconds 12.5" in lines
    assert 'virt_launcher_resident_memory_bytes{process="launcher"} 3.145728e+07' in lines
    assert "virt_launcher_ready 1.0" in lines
    # The same registry renders the next snapshot, not a mix of both.
    lines = set(metrics.render(snapshot(running=False)).decode().splitlines())
    assert "virt_launcher_hypervisor_up 0.0" in lines and "virt_launcher_ready 0.0" in lines
    assert not any(ln.startswith("virt_launcher_time_to_ready_seconds ") for ln in lines)


def test_kubevirt_series_parse_and_match_the_snapshot() -> None:
    """KubeVirt's names and labels, read back with prometheus-client's own parser."""
    from dataclasses import replace

    from prometheus_client.parser import text_string_to_metric_families

    from launcher.status.doctor import Diagnosis, Finding

    snap = snapshot(running=True)
    diagnosis = Diagnosis("degraded", "x", 100.0, (Finding("mtu-changed", "warning", "x"),))
    iface = replace(
        snap.interfaces[0], errors=(1, 2, 3, 4), network="pod networking", diagnosis=diagnosis
    )
    snap = replace(snap, interfaces=(iface,))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(Metrics().render(snap).decode())
        for s in family.samples
    }
    vm = (("interface", "pod"), ("name", "vm"), ("namespace", "ns"))
    want = {
        "kubevirt_vmi_network_receive_bytes_total": 1000,
        "kubevirt_vmi_network_transmit_bytes_total": 2000,
        "kubevirt_vmi_network_receive_packets_total": 10,
        "kubevirt_vmi_network_transmit_packets_total": 20,
        "kubevirt_vmi_network_receive_errors_total": 1,
        "kubevirt_vmi_network_transmit_errors_total": 2,
        "kubevirt_vmi_network_receive_packets_dropped_total": 3,
        "kubevirt_vmi_network_transmit_packets_dropped_total": 4,
    }
    for name, value in want.items():
        assert samples[(name, vm)] == value, name
    vnic = (
        ("binding_name", "bridge"),
        ("binding_type", "core"),
        ("name", "vm"),
        ("namespace", "ns"),
        ("network", "pod networking"),
        ("vnic_name", "pod"),
    )
    assert samples[("kubevirt_vmi_vnic_info", vnic)] == 1
    for address in ("10.244.1.5", "fd00::5"):
        labels = (
            ("address", address),
            ("name", "vm"),
            ("namespace", "ns"),
            ("network_name", "pod"),
            ("type", "InternalIP"),
        )
        assert samples[("kubevirt_vmi_status_addresses", labels)] == 1
    verdicts = {
        v: samples[("virt_launcher_network_verdict", (("interface", "pod"), ("verdict", v)))]
        for v in ("ok", "degraded", "no-network")
    }
    assert verdicts == {"ok": 0, "degraded": 1, "no-network": 0}
