"""Shared pieces of the status component tests: a real spec and plan, a real DHCPv4 server
on loopback, a stand-in hypervisor whose VMM is a real process, and schema checks against
the committed OpenAPI document."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dhcp.v4 import options as o
from dhcp.v4.codec import Message
from dhcp.v4.config import Dhcp4Config, Lease4
from dhcp.v4.server import Dhcp4Server
from hypervisor.base import LifecycleEvent
from hypervisor.machine import VmState
from launcher.network import NetworkPlan, plan
from launcher.plandoc import synthetic_pod
from launcher.spec import VmSpec, load

OPENAPI = Path(__file__).resolve().parents[3] / "launcher" / "status" / "openapi.yaml"
SECRET = "st-Sup3rSecret-passw0rd"

SPEC = f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: st-vm
  namespace: st
  annotations:
    st.example/token: "{SECRET}-annotation"
spec:
  domain:
    cpu: {{cores: 1}}
    memory: {{guest: 256Mi}}
    devices:
      interfaces:
        - name: pod
          bridge: {{}}
      disks:
        - name: cloudinitdisk
          disk: {{bus: virtio}}
  networks:
    - name: pod
      pod: {{}}
  volumes:
    - name: cloudinitdisk
      cloudInitNoCloud:
        userData: |
          #cloud-config
          password: {SECRET}
          chpasswd: {{expire: false}}
"""


def schema_for(name: str) -> dict[str, Any]:
    """The OpenAPI document as a JSON Schema rooted at ``components.schemas.<name>``."""
    doc = yaml.safe_load(OPENAPI.read_text())
    return {**doc, "$ref": f"#/components/schemas/{name}"}


def check(name: str, body: object) -> None:
    """Validate ``body`` against the named schema of the committed OpenAPI document."""
    jsonschema.Draft202012Validator(schema_for(name)).validate(body)


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    path = tmp_path / "vm.yaml"
    path.write_text(SPEC)
    return load(path)


@pytest.fixture
def net_plan(spec: VmSpec) -> NetworkPlan:
    return plan(spec, synthetic_pod(spec))


@dataclass
class StandInHypervisor:
    """The Hypervisor protocol's read side with a real process as the "VMM" (for /proc reads).

    The real adapters need a VMM binary and a guest (the e2e tier runs them); the status
    endpoint reads only ``kind``, ``state``, ``pid`` and ``events()``.
    """

    proc: subprocess.Popen[bytes]
    kind: str = "qemu"
    state: VmState = VmState.CREATED
    history: list[LifecycleEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    async def ping(self) -> None:
        """Answers at once (the liveness check's ping)."""

    async def events(self) -> AsyncIterator[LifecycleEvent]:
        seen = 0
        for _ in range(1000):
            while seen < len(self.history):
                yield self.history[seen]
                seen += 1
            if self.state in (VmState.SHUTDOWN, VmState.FAILED):
                return
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 30)

    def emit(self, name: str, state: VmState | None = None) -> None:
        if state is not None:
            self.state = state
        self.history.append(LifecycleEvent(name, "qmp", 0.0, state))
        self.changed.set()


@pytest.fixture
def vmm() -> Iterator[StandInHypervisor]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield StandInHypervisor(proc)
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture
async def dhcp4(net_plan: NetworkPlan) -> AsyncIterator[Dhcp4Server]:
    """A real DHCPv4 server on loopback (ephemeral port) serving the plan's lease."""
    d4 = net_plan.nics[0].dhcp4
    assert d4 is not None
    port = _free_udp_port()
    server = Dhcp4Server(
        Dhcp4Config(
            interface="lo",
            server_address=d4.server_address,
            leases=(Lease4(d4.leases[0].mac, d4.leases[0].address),),
            port=port,
        )
    )
    async with server:
        yield server


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def exchange(server: Dhcp4Server, mac: str, *kinds: int) -> None:
    """Send real DHCP datagrams to ``server`` over loopback and wait until each is counted."""
    chaddr = bytes.fromhex(mac.replace(":", ""))
    lease = server.config.leases[0]
    packed = lease.address.ip.packed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, kind in enumerate(kinds):
            opts: tuple[tuple[int, bytes], ...] = ((o.MESSAGE_TYPE, bytes((kind,))),)
            if kind in (o.REQUEST, o.DECLINE):
                opts += (
                    (o.REQUESTED_ADDRESS, packed),
                    (o.SERVER_ID, server.config.server_address.packed),
                )
            msg = Message(op=1, xid=0x5700 + i, chaddr=chaddr, options=opts)
            before = server.snapshot().counters.received
            sock.sendto(msg.build(), ("127.0.0.1", server.config.port))
            for _ in range(200):
                if server.snapshot().counters.received > before:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"the DHCPv4 server never received message type {kind}")


def counts(events: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(f"{e['source']}:{e['kind']}" for e in events)
