"""launcher.privileges: the capabilities a plan needs (what the manifest adds and run
checks), read from a real /proc status file, and the one-line refusal naming each; CHOWN
only for the disks the VMM user is given, named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher.errors import NetworkError
from launcher.manifest import plan_for_manifest
from launcher.privileges import (
    CAPABILITY_BITS,
    STARTUP_CAPABILITIES,
    capability_reasons,
    check_capabilities,
    effective_capabilities,
    handed_over_disks,
    needed_capabilities,
)
from launcher.spec import VmSpec, parse

VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: p, namespace: t}}
spec:
  domain:
    memory: {{guest: 1Gi}}
    devices:
      interfaces: [{{name: pod, {binding}: {{}}}}]
  networks: [{{name: pod, pod: {{}}}}]
"""


def spec_for(binding: str) -> VmSpec:
    return parse(yaml.safe_load(VM.format(binding=binding)))


def status_file(tmp_path: Path, caps: list[str]) -> Path:
    mask = sum(1 << CAPABILITY_BITS[c] for c in caps) | 1 << 21  # + SYS_ADMIN, not named
    path = tmp_path / "status"
    path.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t{mask:016x}\n")
    return path


def test_effective_capabilities_of_this_process_and_of_a_status_file(tmp_path: Path) -> None:
    assert effective_capabilities() <= set(CAPABILITY_BITS)
    got = effective_capabilities(status_file(tmp_path, ["NET_RAW", "SETGID"]))
    assert got == {"NET_RAW", "SETGID"}


@pytest.mark.parametrize("binding", ["bridge", "masquerade"])
def test_a_tap_nic_served_by_dhcp_needs_the_three_network_capabilities(binding: str) -> None:
    spec = spec_for(binding)
    needed = needed_capabilities(spec, plan_for_manifest(spec))
    assert needed == (
        "NET_ADMIN",
        "NET_RAW",
        "NET_BIND_SERVICE",
        "SETUID",
        "SETGID",
        "KILL",
    )
    check_capabilities(spec, plan_for_manifest(spec), have=STARTUP_CAPABILITIES)


def test_a_missing_capability_is_named_with_what_it_is_for() -> None:
    spec = spec_for("bridge")
    with pytest.raises(NetworkError) as caught:
        check_capabilities(spec, plan_for_manifest(spec), have=["NET_RAW", "NET_BIND_SERVICE"])
    message = str(caught.value)
    assert message.startswith("missing capability NET_ADMIN (NET_ADMIN: create the bridge")
    assert "securityContext.capabilities.add" in message
    assert caught.value.exit_code == 3
    with pytest.raises(NetworkError, match="missing capabilities NET_RAW, NET_BIND_SERVICE"):
        check_capabilities(spec, plan_for_manifest(spec), have=["NET_ADMIN"])


def test_setuid_and_setgid_are_not_checked_at_start() -> None:
    """They are for starting the VMM as its user: that step checks them."""
    spec = spec_for("masquerade")
    check_capabilities(spec, plan_for_manifest(spec), have=["NET_ADMIN", "NET_RAW",
                                                            "NET_BIND_SERVICE"])  # fmt: skip


MIXED = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: p, namespace: t}
spec:
  domain:
    memory: {guest: 1Gi}
    devices:
      interfaces: [{name: pod, bridge: {}}]
      disks:
        - {name: root, disk: {}}
        - {name: iso, cdrom: {}}
        - {name: ro, disk: {readonly: true}}
        - {name: data, disk: {}}
        - {name: dv, disk: {}}
        - {name: host, disk: {}}
        - {name: scratch, disk: {}}
        - {name: seed, disk: {}}
  networks: [{name: pod, pod: {}}]
  volumes:
    - {name: root, containerDisk: {image: example.com/os:1}}
    - {name: iso, containerDisk: {image: example.com/iso:1}}
    - {name: ro, persistentVolumeClaim: {claimName: shared}}
    - {name: data, persistentVolumeClaim: {claimName: data-pvc}}
    - {name: dv, dataVolume: {name: my-dv}}
    - {name: host, hostDisk: {path: /var/lib/h.img, type: DiskOrCreate, capacity: 1Gi}}
    - {name: scratch, emptyDisk: {capacity: 1Gi}}
    - {name: seed, cloudInitNoCloud: {userData: x}}
"""


def test_the_disks_handed_over_are_the_writable_files() -> None:
    spec = parse(yaml.safe_load(MIXED))
    assert [str(d) for d in handed_over_disks(spec, block={"dv"})] == [
        "'root' (containerDisk's qcow2 overlay)",
        "'data' (persistentVolumeClaim data-pvc)",
        "'host' (hostDisk /var/lib/h.img)",
        "'scratch' (emptyDisk)",
    ]
    assert [d.disk for d in handed_over_disks(spec)] == ["root", "data", "dv", "host", "scratch"]
    assert handed_over_disks(spec, vmm_user="keep") == ()  # the VMM is the launcher's user
    assert handed_over_disks(spec_for("bridge")) == ()  # no disk at all


def test_chown_only_for_a_disk_to_hand_over_and_named_with_it() -> None:
    spec = parse(yaml.safe_load(MIXED))
    plan = plan_for_manifest(spec)
    assert "CHOWN" in needed_capabilities(spec, plan)
    assert "CHOWN" not in needed_capabilities(spec, plan, vmm_user="keep")
    assert "CHOWN" not in needed_capabilities(
        spec_for("bridge"), plan_for_manifest(spec_for("bridge"))
    )
    why = capability_reasons(spec, plan, vmm_user="107:108", block={"dv"})["CHOWN"]
    assert why.startswith("give the VMM user (107:108) the disk files it writes: disks 'root' ")
    assert "'scratch' (emptyDisk)" in why and "'seed'" not in why and "'dv'" not in why


def test_missing_chown_is_exit_3_naming_the_disk_and_the_pod_field() -> None:
    spec = parse(yaml.safe_load(MIXED))
    plan = plan_for_manifest(spec)
    with pytest.raises(NetworkError) as caught:
        check_capabilities(spec, plan, have=["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"])
    message = str(caught.value)
    assert message.startswith("missing capability CHOWN (CHOWN: give the VMM user (107:107)")
    assert "'scratch' (emptyDisk)" in message
    assert "securityContext.capabilities.add" in message
    assert caught.value.exit_code == 3
    check_capabilities(spec, plan, have=STARTUP_CAPABILITIES)
    check_capabilities(
        spec, plan, have=["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"], vmm_user="keep"
    )
    diskless = spec_for("bridge")  # needs no CHOWN: a container without it runs
    network_only = ["NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"]
    check_capabilities(diskless, plan_for_manifest(diskless), have=network_only)
