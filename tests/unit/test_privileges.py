"""launcher.privileges: the capabilities a plan needs (what the manifest adds and run
checks), read from a real /proc status file, and the one-line refusal naming each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from launcher.errors import NetworkError
from launcher.manifest import plan_for_manifest
from launcher.privileges import (
    CAPABILITY_BITS,
    STARTUP_CAPABILITIES,
    check_capabilities,
    effective_capabilities,
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
        "CHOWN",
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
