"""Command line of ``virt-launcher`` (also ``python -m launcher``).

``validate`` checks the spec and prints a one-line summary, ``plan`` prints spec, network
plan, resolved volumes and hypervisor config as JSON without changing anything
(:mod:`launcher.machine`), ``manifest`` prints the Kubernetes objects that run the VM
(:mod:`launcher.manifest`), ``run`` is the pod entrypoint (the composition root,
:mod:`launcher.run`, imported only by :func:`run`), ``status`` reads a running
launcher's status endpoint (``--check live|ready``: the exec probes). Exit
codes come from :mod:`launcher.errors`: 0 ok, 2 invalid spec or usage, 1 unexpected.
Expected errors never print a traceback; an unexpected one prints one ERROR line (the
traceback only at ``--log-level debug``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from launcher import logs, signals
from launcher.errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    HypervisorError,
    LauncherError,
    Problem,
    SpecError,
)
from launcher.startup import import_asyncio

if TYPE_CHECKING:
    from launcher.netchild import Started
    from launcher.options import RunOptions
    from launcher.privsep.helper import Helper
    from launcher.run import StatusTask
    from launcher.spec import VmSpec
    from launcher.status.listen import Listen
    from launcher.status.model import StatusBoard

__all__ = [
    "DEFAULT_SPEC_PATH",
    "SPEC_ENV",
    "Options",
    "main",
    "manifest",
    "parse_args",
    "plan",
    "run",
    "summary",
    "validate",
]

log = logging.getLogger(__name__)

DEFAULT_SPEC_PATH = Path("/etc/virt-launcher/vm.yaml")
SPEC_ENV = "VIRT_LAUNCHER_SPEC"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Options:
    """The parsed command line."""

    command: str
    spec_path: Path
    log_level: str = "info"
    run_args: Mapping[str, Any] = field(default_factory=dict)  # ``run`` options (RUN_ARGS)
    plan_args: Mapping[str, Any] = field(default_factory=dict)  # ``plan``-only (PLAN_ARGS)
    status_args: Mapping[str, Any] = field(default_factory=dict)  # STATUS_ARGS (run, status)
    manifest_args: Mapping[str, Any] = field(default_factory=dict)  # MANIFEST_ARGS


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--spec",
        metavar="FILE",
        default=default,
        help=f"the VM manifest, YAML or JSON (default: ${SPEC_ENV}, else {DEFAULT_SPEC_PATH})",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="log verbosity; logs are JSON lines on stderr (default: info)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with the three subcommands."""
    parser = argparse.ArgumentParser(
        prog="virt-launcher",
        description="The entrypoint of a VM pod: reads the VM spec, wires the pod network "
        "to the guest and supervises the hypervisor.",
    )
    _add_common(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "validate": "check the spec and print a one-line summary (exit 2 listing every problem)",
        "plan": "print the normalized spec as JSON; changes nothing",
        "manifest": "print the Kubernetes objects (ConfigMap + Pod) that run this VM, as "
        "multi-document YAML for kubectl apply -f - (exit 2 listing every reason it cannot run)",
        "run": "start and supervise the VM (the pod entrypoint)",
        "status": "print what a running launcher's status endpoint serves (--json: raw)",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        _add_common(sub, argparse.SUPPRESS)  # so --spec works before or after the command
        if name == "run":
            _add_run_arguments(sub)
        if name == "plan":
            _add_plan_arguments(sub)
        if name == "manifest":
            _add_manifest_arguments(sub)
        if name == "validate":
            _add_validate_arguments(sub)
        if name in ("run", "status", "plan", "validate"):
            _add_status_arguments(sub, name)
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Options:
    """``argv`` (without the program name) as :class:`Options`; exits 2 on usage errors."""
    env = os.environ if environ is None else environ
    ns = build_parser().parse_args(list(argv))
    spec = ns.spec or env.get(SPEC_ENV) or str(DEFAULT_SPEC_PATH)
    run_args = {k: v for k, v in vars(ns).items() if k in RUN_ARGS and v is not None}
    return Options(
        command=ns.command,
        spec_path=Path(spec),
        log_level=ns.log_level or "info",
        run_args=run_args,
        plan_args={k: v for k, v in vars(ns).items() if k in PLAN_ARGS and v is not None},
        status_args={k: v for k, v in vars(ns).items() if k in STATUS_ARGS and v is not None},
        manifest_args={k: v for k, v in vars(ns).items() if k in MANIFEST_ARGS and v is not None},
    )


def _load(path: Path) -> VmSpec:
    from launcher.spec import load  # noqa: PLC0415 - startup: CLI light (the exec probe)

    return load(path)


def _format_bytes(count: int) -> str:
    from launcher.spec import format_bytes  # noqa: PLC0415 - the same

    return format_bytes(count)


def summary(spec: VmSpec) -> str:
    """One line describing a valid spec, as ``validate`` prints it."""
    kinds = ", ".join(dict.fromkeys(i.binding.kind.value for i in spec.interfaces))
    ifaces = f"{len(spec.interfaces)} interface{'' if len(spec.interfaces) == 1 else 's'}"
    if kinds:
        ifaces += f" ({kinds})"
    disks = f"{len(spec.disks)} disk{'' if len(spec.disks) == 1 else 's'}"
    return (
        f"ok: {spec.shape.value} {spec.namespace}/{spec.name}: {spec.cpu.vcpus} vCPU, "
        f"{_format_bytes(spec.memory_bytes)}, {ifaces}, {disks}"
    )


def validate(options: Options, out: TextIO) -> int:
    """``virt-launcher validate``: load the spec, check it against the hypervisor that
    would run it (``--hypervisor``, else by shape: NIC models) and the status port it
    would serve (``--status-listen``: masquerade never forwards it), and print its
    summary."""
    from launcher.machine import (  # noqa: PLC0415 - startup: CLI light
        check_for_hypervisor,
        choose_hypervisor,
        forwarded_port_problems,
    )

    spec = _load(options.spec_path)
    status_port = _status_port(options)
    if status_port is not None:  # load knew only the default status port
        problems = forwarded_port_problems(spec, status_port)
        if problems:
            raise SpecError(problems)
    kind = choose_hypervisor(spec, options.run_args.get("hypervisor"))
    check_for_hypervisor(
        spec,
        kind,
        qemu_binary=options.run_args.get("qemu_binary", "qemu-system-x86_64"),
        cache_dir=None,
    )
    print(summary(spec), file=out)
    return EXIT_OK


def _add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``validate`` checks the spec against: the hypervisor ``run`` would start."""
    g = parser.add_argument_group("validate")
    g.add_argument("--hypervisor", choices=("qemu", "cloud-hypervisor"), help="as for run")
    g.add_argument(
        "--qemu-binary", metavar="PATH", help="as for run (asked which NIC models it has)"
    )


PLAN_ARGS = ("offline", "pod_netns")  # the rest of plan's options are RUN_ARGS


def _add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``plan`` (docs/volumes.md): where to read the pod, plus the ``run``
    options that change what would be started."""
    g = parser.add_argument_group("plan")
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="plan against a synthetic pod (eth0 10.244.1.5/24, fd00:10:244:1::5/64) "
        "instead of reading a network namespace: for trying examples outside a pod",
    )
    where.add_argument(
        "--pod-netns",
        metavar="NAME",
        help="read the named network namespace (/run/netns/NAME) instead of the current one",
    )
    g.add_argument("--state-dir", type=Path, metavar="DIR", help="as for run")
    g.add_argument("--volumes-dir", type=Path, metavar="DIR", help="as for run")
    g.add_argument("--hypervisor", choices=("qemu", "cloud-hypervisor"), help="as for run")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), help="as for run (never probed)")
    g.add_argument("--qemu-binary", metavar="PATH", help="as for run")
    g.add_argument("--cloud-hypervisor-binary", metavar="PATH", help="as for run")
    g.add_argument("--podinfo", type=Path, metavar="DIR", help="as for run")
    g.add_argument(
        "--host-root",
        type=Path,
        metavar="DIR",
        help="where sys/ and dev/ are for the SR-IOV and vDPA checks (default /; for trying "
        "examples against a fake tree, docs/secondary-networks.md)",
    )


def plan(options: Options, out: TextIO) -> int:
    """``virt-launcher plan``: spec, network plan, resolved volumes and the hypervisor
    config as one JSON document (:func:`launcher.machine.plan_document`); changes nothing.

    Exit 0, or the documented code of the first entry of ``problems`` (the rest of the
    document is still printed).
    """
    from launcher.options import RunOptions  # noqa: PLC0415 - startup: CLI light
    from launcher.plandoc import plan_document  # noqa: PLC0415 - startup: CLI light

    spec = _load(options.spec_path)
    plan_only = dict(options.plan_args)
    run_options = RunOptions.from_args(
        options.spec_path,
        {
            **options.run_args,
            **({"host_root": plan_only.pop("host_root")} if "host_root" in plan_only else {}),
            **_status_port_arg(options),
        },
    )
    document, code = plan_document(
        spec,
        run_options,
        offline=bool(plan_only.get("offline")),
        pod_netns=plan_only.get("pod_netns"),
    )
    json.dump(document, out, indent=2)
    out.write("\n")
    for problem in document["problems"]:
        log.warning("%s", problem["message"], extra={"event": "plan-problem"})
    return code


#: launcher.network.state.DEFAULT_STATE_DIR, repeated so ``run`` can fork its netlink
#: child before importing the network package (a unit test keeps the two equal).
DEFAULT_STATE_DIR = Path("/var/run/virt-launcher")

RUN_ARGS = (
    "state_dir",
    "hypervisor",
    "qemu_binary",
    "cloud_hypervisor_binary",
    "accel",
    "volumes_dir",
    "termination_log",
    "pod_interface",
    "console_log",
    "podinfo",
    "hotplug_ports",
    "vmm_user",
    "host_root",  # plan only (run always uses /)
)


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``run`` (docs/run.md); defaults live in ``launcher.run.RunOptions``."""
    g = parser.add_argument_group("run")
    g.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the network state survives a launcher restart (default /var/run/virt-launcher)",
    )
    g.add_argument(
        "--hypervisor",
        choices=("qemu", "cloud-hypervisor"),
        help="the VMM (default: from the spec, Virtink -> cloud-hypervisor, KubeVirt -> qemu)",
    )
    g.add_argument("--qemu-binary", metavar="PATH", help="default qemu-system-x86_64")
    g.add_argument("--cloud-hypervisor-binary", metavar="PATH", help="default cloud-hypervisor")
    g.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        help="QEMU accelerator; auto probes whether KVM can really run a guest (default auto)",
    )
    g.add_argument(
        "--volumes-dir",
        type=Path,
        metavar="DIR",
        help="where kernel and disk files are mounted (default /var/run/virt-launcher/volumes)",
    )
    g.add_argument(
        "--termination-log",
        type=Path,
        metavar="FILE",
        help="why the launcher exited, for kubelet (default /dev/termination-log; skipped "
        "when its directory does not exist)",
    )
    g.add_argument(
        "--pod-interface",
        metavar="NAME",
        help="the pod network's interface, as the CNI named it (default eth0)",
    )
    g.add_argument(
        "--podinfo",
        type=Path,
        metavar="DIR",
        help="the downward API volume with the pod's annotations file (Multus "
        "network-status; default /etc/podinfo; env NETWORK_STATUS is read when absent)",
    )
    g.add_argument(
        "--console-log",
        type=Path,
        metavar="FILE",
        help="write the guest serial console to FILE (default: stdout, each line prefixed "
        "'serial: ')",
    )
    g.add_argument(
        "--hotplug-ports",
        type=int,
        metavar="N",
        help="QEMU: free PCIe root ports reserved for NIC hot plug (default 4; docs/hotplug.md)",
    )
    g.add_argument(
        "--vmm-user",
        metavar="UID[:GID]",
        help="the user the VMM runs as (default 107:107, KubeVirt's qemu; 'keep': the "
        "launcher's own user; docs/privileges.md)",
    )


STATUS_ARGS = ("status_listen", "json", "check")


def _add_status_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """``--status-listen`` (run, status) and ``--json`` (status); docs/status.md."""
    g = parser.add_argument_group("status endpoint")
    g.add_argument(
        "--status-listen",
        metavar="ADDR",
        help="loopback HOST:PORT or a unix socket path of the status endpoint "
        "(default 127.0.0.1:8186; never the pod IP)",
    )
    if command == "status":
        how = g.add_mutually_exclusive_group()
        how.add_argument(
            "--json", action="store_true", default=None, help="print /status as served"
        )
        how.add_argument(
            "--check",
            choices=("live", "ready"),
            help="exec probe: GET /healthz (live) or /readyz (ready); exit 0 when it answers "
            "200, 7 when it answers 503 (not live / not ready), 6 when it cannot be reached",
        )


def status(options: Options, out: TextIO) -> int:
    """``virt-launcher status``: print the status a running launcher serves; with
    ``--check``, the exec probe (standard library only: it runs every few seconds)."""
    from launcher.status.client import check, show  # noqa: PLC0415 - startup: CLI light
    from launcher.status.listen import DEFAULT_LISTEN  # noqa: PLC0415 - the same

    listen = options.status_args.get("status_listen", DEFAULT_LISTEN)
    which = options.status_args.get("check")
    if which is not None:
        return check(listen, which, out)
    return show(listen, out, as_json=bool(options.status_args.get("json")))


MANIFEST_ARGS = (
    "image",
    "namespace",
    "image_pull_policy",
    "hypervisor",
    "accel",
    "image_source",
    "copier_image",
    "network_resource",
    "network_resources_injected",
    "block_volume",
    "grace_margin",
    "cpu_allocation_ratio",
    "restart_policy",
    "ip_families",
    "no_probes",
    "kvm_resource",
    "tun_resource",
    "vhost_net_resource",
)


def _add_manifest_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``manifest`` (docs/deploy.md)."""
    g = parser.add_argument_group("manifest")
    g.add_argument(
        "--image", metavar="IMG", help="the launcher image (default virt-launcher:latest)"
    )
    g.add_argument(
        "--namespace", metavar="N", help="namespace of the objects (default: the spec's)"
    )
    g.add_argument(
        "--image-pull-policy", choices=("Always", "IfNotPresent", "Never"), help="for every image"
    )
    g.add_argument("--hypervisor", choices=("qemu", "cloud-hypervisor"), help="passed to run")
    g.add_argument(
        "--accel", choices=("auto", "kvm", "tcg"), help="passed to run; tcg requests no /dev/kvm"
    )
    g.add_argument(
        "--image-source",
        choices=("copy", "volume"),
        help="kernelBoot and containerDisk images: copy (default: init containers copy the "
        "files into emptyDirs, any Kubernetes) or volume (read-only Kubernetes image "
        "volumes: Kubernetes 1.31+ with the ImageVolume feature gate, on by default from "
        "1.35; only read-only disks)",
    )
    g.add_argument(
        "--copier-image",
        metavar="IMG",
        help="image holding the static /bin/busybox the copy init containers run "
        "(default: the launcher image)",
    )
    g.add_argument(
        "--network-resource",
        action="append",
        metavar="NETWORK=RESOURCE",
        help="device-plugin resource of a spec multus network (its NetworkAttachmentDefinition's "
        "k8s.v1.cni.cncf.io/resourceName); required for SR-IOV and vDPA networks; repeatable",
    )
    g.add_argument(
        "--network-resources-injected",
        action="store_true",
        default=None,
        help="the network-resources-injector webhook adds SR-IOV/vDPA resources: request none",
    )
    g.add_argument(
        "--block-volume",
        action="append",
        metavar="VOLUME",
        help="a persistentVolumeClaim/dataVolume volume whose claim is in block mode; repeatable",
    )
    g.add_argument(
        "--grace-margin",
        type=int,
        metavar="S",
        help="seconds added to the spec's grace period for kubelet's (default 15)",
    )
    g.add_argument(
        "--cpu-allocation-ratio",
        type=int,
        metavar="N",
        help="vCPUs per requested CPU when CPUs are shared (default 1; KubeVirt's default is 10)",
    )
    g.add_argument(
        "--restart-policy",
        choices=("Never", "OnFailure", "Always"),
        help="the pod's restartPolicy (default Never: a powered-off VM stays off)",
    )
    g.add_argument(
        "--ip-families",
        choices=("dual", "ipv4", "ipv6"),
        help="the cluster's pod network: decides the IPv4/IPv6 sysctls (default dual)",
    )
    g.add_argument("--no-probes", action="store_true", default=None, help="no exec probes")
    for device, default in (
        ("kvm", "devices.kubevirt.io/kvm"),
        ("tun", "devices.kubevirt.io/tun"),
        ("vhost-net", "devices.kubevirt.io/vhost-net"),
    ):
        g.add_argument(
            f"--{device}-resource",
            metavar="NAME",
            help=f"device-plugin resource for /dev/{'net/tun' if device == 'tun' else device} "
            f"(default {default}; 'none' leaves it out)",
        )


def manifest(options: Options, out: TextIO) -> int:
    """``virt-launcher manifest``: the ConfigMap and Pod that run the VM, as YAML."""
    from launcher.manifest import (  # noqa: PLC0415 - startup: CLI light
        DeviceNames,
        ImageSource,
        ManifestSettings,
        build,
        render,
    )

    spec = _load(options.spec_path)
    args = options.manifest_args
    resources: list[tuple[str, str]] = []
    for item in args.get("network_resource", []):
        name, sep, resource = item.partition("=")
        if not sep or not name or not resource:
            raise SpecError([Problem("--network-resource", f"{item!r} is not NETWORK=RESOURCE")])
        resources.append((name, resource))
    defaults = DeviceNames()

    def device(key: str, default: str | None) -> str | None:
        value = args.get(key)
        if value is None:
            return default
        return None if value == "none" else str(value)

    given: dict[str, Any] = {
        "image": args.get("image"),
        "namespace": args.get("namespace"),
        "image_pull_policy": args.get("image_pull_policy"),
        "hypervisor": args.get("hypervisor"),
        "accel": args.get("accel"),
        "copier_image": args.get("copier_image"),
        "grace_margin_s": args.get("grace_margin"),
        "cpu_allocation_ratio": args.get("cpu_allocation_ratio"),
        "restart_policy": args.get("restart_policy"),
        "ip_families": args.get("ip_families"),
    }
    settings = ManifestSettings(
        **{k: v for k, v in given.items() if v is not None},
        devices=DeviceNames(
            kvm=device("kvm_resource", defaults.kvm),
            tun=device("tun_resource", defaults.tun),
            vhost_net=device("vhost_net_resource", defaults.vhost_net),
        ),
        image_source=ImageSource(args.get("image_source", ImageSource.COPY.value)),
        network_resources=tuple(resources),
        network_resources_injected=bool(args.get("network_resources_injected")),
        block_volumes=tuple(args.get("block_volume", [])),
        probes=not args.get("no_probes"),
    )
    text = options.spec_path.read_text(encoding="utf-8")
    out.write(render(build(spec, text, settings, str(options.spec_path)), options.spec_path))
    return EXIT_OK


def run(options: Options, child: Started | None = None, helper: Helper | None = None) -> int:
    """``virt-launcher run``: the pod entrypoint (:mod:`launcher.run`).

    ``child``: the netlink child :mod:`launcher.entry` forked before this module was
    imported; else it is forked here (one thread, no event loop yet). Either way it
    imports pyroute2 and the network package and discovers the pod on the other core
    while this process imports the rest of the launcher and loads the spec (docs/run.md).
    ``helper``: the privileged helper (docs/privileges.md), forked here likewise.
    """
    signals.hold()  # launcher.entry did already; a caller of main() may not have
    import_asyncio()
    from launcher.agent import Agent  # noqa: PLC0415 - startup: CLI light

    agent = Agent.fork() if child is None else Agent(child)
    agent.prefetch("discover", None, options.run_args.get("state_dir", DEFAULT_STATE_DIR))
    if helper is None:
        from launcher.privsep.helper import Helper  # noqa: PLC0415 - startup: CLI light

        helper = Helper.fork()
    from launcher.run import run as run_vm  # noqa: PLC0415 - startup: CLI light

    listen = _listen(options)
    return run_vm(
        _run_options(options, listen), status=_status_task(listen), agent=agent, helper=helper
    )


def _listen(options: Options) -> Listen:
    from launcher.status.listen import DEFAULT_LISTEN, parse_listen  # noqa: PLC0415 - the same

    return parse_listen(options.status_args.get("status_listen", DEFAULT_LISTEN))


def _status_port(options: Options) -> int | None:
    """The TCP port of ``--status-listen`` when given (None: not given, or a unix socket)."""
    if "status_listen" not in options.status_args:
        return None
    return _listen(options).port


def _status_port_arg(options: Options) -> dict[str, int]:
    """``status_port`` for :meth:`RunOptions.from_args` from ``--status-listen``, as
    ``run`` passes it (``plan`` prints what ``run`` with the same options would do)."""
    port = _status_port(options)
    return {} if port is None else {"status_port": port}


def _run_options(options: Options, listen: Listen) -> RunOptions:
    """The one options type from the command line (``run`` and ``plan`` alike): the status
    endpoint's port is the one masquerade never DNATs."""
    from launcher.options import RunOptions  # noqa: PLC0415 - startup: CLI light

    extra = {"status_port": listen.port} if listen.port else {}
    return RunOptions.from_args(options.spec_path, {**options.run_args, **extra})


def _status_task(listen: Listen) -> StatusTask:
    """The status task, importing launcher.status.task when the run starts it."""

    async def serve(board: StatusBoard) -> None:
        from launcher.status.task import status_task  # noqa: PLC0415 - startup: status HTTP stack

        await status_task(listen)(board)

    return serve


def main(
    argv: Sequence[str] | None = None,
    *,
    child: Started | None = None,
    helper: Helper | None = None,
) -> int:
    """The CLI (the ``virt-launcher`` console script is :mod:`launcher.entry`); returns the
    exit code. ``child``/``helper``: ``run``'s netlink child and privileged helper when
    the entry module forked them."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure(options.log_level)
    try:
        if options.command == "validate":
            return validate(options, sys.stdout)
        if options.command == "plan":
            return plan(options, sys.stdout)
        if options.command == "status":
            return status(options, sys.stdout)
        if options.command == "manifest":
            return manifest(options, sys.stdout)
        return run(options, child, helper)
    except SpecError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return err.exit_code
    except (LauncherError, HypervisorError) as err:
        log.error("%s", err, extra={"event": "error"})
        log.debug("traceback", exc_info=err)
        return err.exit_code
    except Exception as err:  # the one place an unexpected error becomes exit 1
        log.error("unexpected error: %s: %s", type(err).__name__, err, extra={"event": "crash"})
        log.debug("traceback", exc_info=err)
        return EXIT_INTERNAL
