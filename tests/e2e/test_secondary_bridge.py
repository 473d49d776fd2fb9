"""E2E: a guest with a secondary (Multus) bridge network and a generated cloud-init network-config.

``python -m launcher run`` boots the test guest (docs/guest.md) under QEMU/TCG in a
simulated pod (``mu-pod-<pid>``) that has, as Multus and its CNIs would leave it:

* ``eth0``: the pod network, a veth to ``mu-peer-<pid>`` (10.91.0.5/24, default route);
* a secondary network with IPAM on ``pod<hash("sec")>`` (KubeVirt's hashed name), a veth
  to ``mu-l2-<pid>`` (10.92.0.5/24, no default route);
* a secondary network without IPAM on ``pod<hash("l2")>`` (plain L2, no address), a veth
  to the same ``mu-l2-<pid>``, for which the network-status lists 10.93.0.7/24 (static
  IPAM the guest must apply itself).

The Multus network-status reaches the launcher through ``--podinfo`` (a downward API
annotations file, Go-quoted). Checked: the guest leases the secondary address on its
second NIC (no router) and serves HTTP to the secondary network's peer; no DHCP is
served on the plain-L2 NIC (its bridge has no address); the cloud-init ISO (label
cidata) reaches the guest with the spec's user-data and the meta-data (instance-id from
the VMI uid) byte for byte, and its network-config holds the user's networkData merged
with a generated entry matching the plain-L2 NIC by MAC with 10.93.0.7/24.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from launcher.network.multus import kubevirt_hashed_name
from testbed.guest.build import GuestImage
from testbed.harness import http_body, sh, simulated_pod, veth
from testbed.launch import start

SUFFIX = os.getpid() % 100000
POD, PEER, L2 = f"mu-pod-{SUFFIX}", f"mu-peer-{SUFFIX}", f"mu-l2-{SUFFIX}"
SEC_IF, L2_IF = kubevirt_hashed_name("sec"), kubevirt_hashed_name("l2")
L2_MAC = "02:00:00:00:91:07"
UID = "4b1a6f3e-91c2-4d55-a0e0-7f3c2b9d0a11"
USER_DATA = "#cloud-config\nhostname: mu-guest\nruncmd: [echo hello]\n"
NETWORK_DATA = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"
BOOT_TIMEOUT_S = 75.0

pytestmark = pytest.mark.timeout(150)

SPEC = f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: mu-vm
  namespace: e2e
  uid: {UID}
spec:
  hostname: mu-guest
  terminationGracePeriodSeconds: 15
  domain:
    cpu:
      cores: 1
    memory:
      guest: 256Mi
    firmware:
      kernelBoot:
        container:
          image: localhost/mu-guest:latest
          kernelPath: /vmlinuz
          initrdPath: /initrd.gz
        kernelArgs: "console=ttyS0 quiet loglevel=1 panic=-1 vl.ready_timeout=8"
    devices:
      disks:
        - name: cloudinitdisk
          disk:
            bus: virtio
      interfaces:
        - name: pod
          bridge: {{}}
        - name: sec
          bridge: {{}}
        - name: l2
          bridge: {{}}
  networks:
    - name: pod
      pod: {{}}
    - name: sec
      multus:
        networkName: e2e/sec-net
    - name: l2
      multus:
        networkName: l2-net
  volumes:
    - name: cloudinitdisk
      cloudInitNoCloud:
        userData: {json.dumps(USER_DATA)}
        networkData: {json.dumps(NETWORK_DATA)}
"""

NETWORK_STATUS = [
    {"name": "kindnet", "interface": "eth0", "ips": ["10.91.0.5"], "default": True, "dns": {}},
    {"name": "e2e/sec-net", "interface": SEC_IF, "ips": ["10.92.0.5"], "dns": {}},
    {"name": "e2e/l2-net", "interface": L2_IF, "ips": ["10.93.0.7/24"], "mac": L2_MAC},
]


@pytest.fixture
def pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, "mup0", ("10.91.0.5", "10.91.0.1"), others=(L2,)):
        veth(POD, SEC_IF, L2, "mus1")
        sh("ip", "-n", POD, "addr", "add", "10.92.0.5/24", "dev", SEC_IF)
        sh("ip", "-n", L2, "addr", "add", "10.92.0.1/24", "dev", "mus1")
        veth(POD, L2_IF, L2, "mus2", L2_MAC)
        sh("ip", "-n", POD, "-6", "addr", "flush", "dev", L2_IF)  # no IPAM at all
        yield


def network_config(text: str) -> str:
    """The raw network-config the guest printed between its markers."""
    lines = [ln.removeprefix("serial: ") for ln in text.splitlines()]
    begin = next(i for i, ln in enumerate(lines) if "VL-CIDATA-NETWORK-CONFIG-BEGIN" in ln)
    end = next(i for i, ln in enumerate(lines) if "VL-CIDATA-NETWORK-CONFIG-END" in ln)
    return "\n".join(lines[begin + 1 : end]) + "\n"


def test_secondary_bridge_and_generated_network_config(
    pod: None, guest: GuestImage, tmp_path: Path
) -> None:
    del pod
    podinfo = tmp_path / "podinfo"
    podinfo.mkdir()
    status = json.dumps(NETWORK_STATUS, indent=4)
    # kubelet's format: key="value" with the value Go-quoted (ASCII JSON: json.dumps agrees)
    (podinfo / "annotations").write_text(
        f'k8s.v1.cni.cncf.io/network-status={json.dumps(status)}\nkubernetes.io/config.source="api"\n'
    )
    listen = f"127.0.0.1:{18000 + SUFFIX % 1000}"
    with start(tmp_path, guest, POD, SPEC, listen=listen, extra=("--podinfo", str(podinfo))) as vm:
        console = vm.console
        lease = console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.92.0.5/24",)
        )
        assert lease.fields["router"] == "", lease  # a secondary network adds no default route
        console.wait_for(
            "LEASE4", BOOT_TIMEOUT_S, where=lambda ln: ln.args[1:2] == ("10.91.0.5/24",)
        )
        assert "VL-HTTP-OK port=80" in http_body(L2, "http://10.92.0.5/")
        # plain L2: the launcher serves nothing there (no address on the NIC's bridge)
        (bridge,) = json.loads(sh("ip", "-n", POD, "-j", "addr", "show", "vlbr2").stdout)
        assert [a for a in bridge["addr_info"] if a["family"] == "inet"] == [], bridge
        ready = console.wait_for("READY", BOOT_TIMEOUT_S)
        assert ready.list_field("timeout"), ready  # the plain-L2 NIC never got a lease

        console.wait_for("CIDATA-DEVICE", 5)
        files = {ln.args[0]: ln.args[1] for ln in console.vl_lines("CIDATA")}
        meta = f"instance-id: {UID}\nlocal-hostname: mu-guest\n"
        assert files["user-data"] == hashlib.sha256(USER_DATA.encode()).hexdigest()
        assert files["meta-data"] == hashlib.sha256(meta.encode()).hexdigest()
        console.wait_for("CIDATA-NETWORK-CONFIG-END", 5)
        net = yaml.safe_load(network_config(console.text()))
        assert net == {
            "version": 2,
            "ethernets": {
                "eth0": {"dhcp4": True},
                "l2": {"match": {"macaddress": L2_MAC}, "addresses": ["10.93.0.7/24"]},
            },
        }
        assert (
            hashlib.sha256(network_config(console.text()).encode()).hexdigest()
            == files["network-config"]
        )
    assert vm.proc.returncode == 0, vm.log()[-3000:]
