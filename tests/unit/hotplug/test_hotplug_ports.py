"""``--hotplug-ports``: parsed into the run options and reserved as QEMU root ports."""

from __future__ import annotations

import dataclasses

from hypervisor.machine import KernelBoot, MachineConfig
from hypervisor.qemu.argv import QemuRuntime, build_argv
from launcher.cli import parse_args
from launcher.run import RunOptions


def root_ports(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("pcie-root-port") and ",id=hp" in a]


def test_cli_passes_the_count_to_the_run_options() -> None:
    options = parse_args(["run", "--spec", "/vm.yaml", "--hotplug-ports", "7"], environ={})
    assert options.run_args["hotplug_ports"] == 7
    assert RunOptions(options.spec_path, **options.run_args).hotplug_ports == 7
    assert "hotplug_ports" not in parse_args(["run"], environ={}).run_args


def test_argv_reserves_that_many_free_root_ports() -> None:
    base = MachineConfig(name="vm", vcpus=1, memory_bytes=256 << 20, kernel=KernelBoot(kernel="/k"))
    runtime = QemuRuntime(qmp_socket="/tmp/q.sock")
    assert len(root_ports(build_argv(base, runtime))) == 4  # OpenShift's documented default
    seven = dataclasses.replace(base, hotplug_ports=7)
    assert len(root_ports(build_argv(seven, runtime))) == 7
