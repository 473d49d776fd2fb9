"""Runs the launcher's container image under podman (runc) on a real CNI network, from a Pod.

Used by the container test tier (``tests/container/``) and by anyone trying the image
by hand (docs/image.md):

* :func:`ensure_image` runs ``scripts/image.sh build`` (cached by a hash of its inputs,
  so a second call builds nothing) and returns the image tag; :func:`ensure_guest_image`
  packs the test guest's kernel and initrd into a kernel-boot image (``FROM scratch``);
* :func:`node` yields a :class:`Node`: a private network namespace that plays the
  Kubernetes node. Every podman command of the node runs in it (``nsenter --net``) with
  the project's ``scripts/containers.conf`` and a private CNI config dir, so the CNI
  bridge, its addresses and the forwarding sysctls the bridge plugin sets exist only
  there, never in the root netns; the "host" that reaches a pod IP is this netns.
  :meth:`Node.network` creates a dual-stack podman network (``podman network create
  --ipv6`` with an IPv4 and an IPv6 subnet: the CNI bridge plugin with host-local IPAM);
* :func:`translate` turns a Kubernetes Pod (a dict as ``virt-launcher manifest`` prints
  it, with the ConfigMaps it names) into ``podman run`` arguments and the host files
  behind its volumes, as kubelet + a CRI runtime would run it. podman 4.3's ``kube play``
  drops pod sysctls, device-plugin resources, ``terminationGracePeriodSeconds`` and
  downwardAPI volumes, so the Pod is translated here instead. A field it does not know
  is an error (:class:`TranslateError`), never silently dropped; fields that only
  matter to the scheduler or the API server are listed in ``IGNORED_*``. It never adds
  a privilege: ``privileged: true``, host namespaces and httpGet/tcpSocket probes of
  the loopback-only status endpoint are refused;
* :meth:`Node.start` runs the translated pod attached (``podman run``): the launcher's
  stdout, which carries the guest serial console, feeds a
  :class:`~testbed.guest.console.ConsoleReader`; :class:`Container` gives the pod IPs,
  ``podman stop``, the exit code, exec probes and the uid and capabilities of every
  process in the container.

Every podman call is bounded by a timeout; containers, networks, the host-local IPAM
state and the netns are removed on exit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.guest.build import GuestImage
from testbed.guest.console import ConsoleReader, ConsoleTimeout, VlLine

__all__ = [
    "ensure_image",
    "ensure_guest_image",
    "node",
    "Node",
    "Network",
    "translate",
    "RunSpec",
    "Container",
    "ProcessInfo",
    "PodStarter",
    "TranslateError",
    "PodmanError",
    "DEVICE_RESOURCES",
    "CRI_DEFAULT_CAPABILITIES",
    "CONTAINERS_CONF",
]

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
IMAGE_BUILD_TIMEOUT_S = 1800.0
PODMAN_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0
INIT_TIMEOUT_S = 120.0
_POLL_S = 0.1

#: Device-plugin resources → the node's device files (KubeVirt's names, the manifest's
#: defaults). A device plugin allocates the device into the container; here ``--device``.
DEVICE_RESOURCES: Mapping[str, tuple[str, ...]] = {
    "devices.kubevirt.io/kvm": ("/dev/kvm",),
    "devices.kubevirt.io/tun": ("/dev/net/tun",),
    "devices.kubevirt.io/vhost-net": ("/dev/vhost-net",),
}

#: What containerd and CRI-O give a container that names no capabilities.
CRI_DEFAULT_CAPABILITIES = (
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
)  # fmt: skip

#: Fields that matter to the API server or scheduler only: accepted, nothing to run.
IGNORED_POD_SPEC = frozenset({
    "restartPolicy", "dnsPolicy", "enableServiceLinks", "automountServiceAccountToken",
    "serviceAccountName", "nodeSelector", "tolerations", "affinity", "priorityClassName",
    "schedulerName", "topologySpreadConstraints", "readinessGates",
})  # fmt: skip
IGNORED_CONTAINER = frozenset({"imagePullPolicy", "ports", "terminationMessagePolicy", "name"})
_CONTAINER_KEYS = frozenset({
    "image", "command", "args", "env", "workingDir", "securityContext", "resources",
    "volumeMounts", "terminationMessagePath", "readinessProbe", "startupProbe",
    "livenessProbe", "stdin", "tty",
})  # fmt: skip
_K8S_DEFAULT_TERMINATION_LOG = "/dev/termination-log"
_K8S_DEFAULT_GRACE_S = 30


class TranslateError(ValueError):
    """The Pod uses something this test bed cannot run as kubelet would (names the field)."""


class PodmanError(AssertionError):
    """A podman command failed or timed out (an assertion failure in tests)."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return env


def ensure_image(timeout: float = IMAGE_BUILD_TIMEOUT_S) -> str:
    """Build the image unless its inputs are unchanged (``scripts/image.sh``); its tag."""
    if shutil.which("podman") is None:
        raise PodmanError("podman is not installed: run scripts/install.sh")
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "image.sh"), "build"],
            capture_output=True, text=True, timeout=timeout, check=False, env=_env(), cwd=ROOT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise PodmanError(f"scripts/image.sh did not finish within {timeout:.0f} s") from err
    if done.returncode != 0:
        raise PodmanError(f"scripts/image.sh failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout.strip().splitlines()[-1]


def ensure_guest_image(guest: GuestImage, timeout: float = 300.0) -> str:
    """The test guest as a kernel-boot container image, built once per guest: a ``FROM
    scratch`` image with ``/vmlinuz`` and ``/initrd.gz`` (KubeVirt's kernelBoot layout) and
    the kernel again as ``/vmlinux`` (Virtink's kernel image layout)."""
    containerfile = (
        f"FROM scratch\nCOPY {guest.kernel.name} /vmlinuz\nCOPY {guest.initrd.name} /initrd.gz\n"
        f"COPY {guest.kernel.name} /vmlinux\n"
    )
    recipe = hashlib.sha256(containerfile.encode()).hexdigest()[:8]
    tag = f"localhost/vl-test-guest:{guest.directory.name}-{recipe}"
    env = _env()
    if subprocess.run(["podman", "image", "exists", tag], env=env, timeout=60,
                      check=False).returncode == 0:  # fmt: skip
        return tag
    try:
        done = subprocess.run(
            ["podman", "build", "--isolation=chroot", "--pull=never", "--quiet", "--tag", tag,
             "--file", "-", str(guest.directory)],
            input=containerfile, capture_output=True, text=True, timeout=timeout, check=False,
            env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        raise PodmanError(f"building {tag} took over {timeout:.0f} s") from err
    if done.returncode != 0:
        raise PodmanError(f"building {tag} failed: {done.stderr.strip()}")
    return tag


# --- the Pod → podman run translation ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A Pod translated: ``podman run`` arguments (flags, image, args) and what backs them."""

    name: str
    argv: tuple[str, ...]  # after "podman run"
    grace_s: int
    termination_log: Path | None  # the host file kubelet would read the message from
    probes: Mapping[str, tuple[str, ...]]  # readiness/startup: exec command
    files: Path  # host directory holding configMap/downwardAPI/emptyDir contents
    init: tuple[tuple[str, ...], ...] = ()  # init containers' `podman run` arguments, in order


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise TranslateError(f"{where}.{key}: {value!r} is not a {kind.__name__}")
    return value


def _only(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise TranslateError(f"{where}: {', '.join(unknown)} not supported by the test bed")


def _quantity_bytes(text: str, where: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}  # fmt: skip
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMGT])?", str(text))
    if match is None:
        raise TranslateError(f"{where}: {text!r} is not a memory quantity")
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def _cpus(text: str, where: str) -> str:
    match = re.fullmatch(r"(\d+)(m)?", str(text))
    if match is None:
        raise TranslateError(f"{where}: {text!r} is not a CPU quantity")
    value = int(match.group(1)) / (1000 if match.group(2) else 1)
    return f"{value:g}"


def _field_value(pod: Mapping[str, Any], path: str, where: str) -> str:
    """A downward-API fieldPath's content as kubelet writes it."""
    meta = pod.get("metadata", {})
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta.get(path.split(".", 1)[1], "default" if "namespace" in path else ""))
    for kind in ("labels", "annotations"):
        values: Mapping[str, str] = meta.get(kind) or {}
        if path == f"metadata.{kind}":
            # kubelet: one key="value" line per entry, sorted, values Go-quoted
            return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(values.items()))
        match = re.fullmatch(rf"metadata\.{kind}\['([^']+)'\]", path)
        if match:
            return values.get(match.group(1), "")
    raise TranslateError(f"{where}: fieldPath {path!r} not supported by the test bed")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


_Source = tuple[str, Path | str | None, bool, str]


def _volume_source(
    pod: Mapping[str, Any],
    volume: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    files: Path,
    fs_group: int | None = None,
) -> _Source:
    """(kind, host path — an image reference for image volumes — or None for a tmpfs,
    forced read-only, tmpfs options) of one volume. With ``fs_group`` the files kubelet
    writes (configMap, downwardAPI, emptyDir) belong to that group, directories setgid."""
    name = volume.get("name")
    where = f"spec.volumes[{name}]"
    kinds = sorted(set(volume) - {"name"})
    if len(kinds) != 1:
        raise TranslateError(f"{where}: exactly one volume source expected, got {kinds}")
    kind = kinds[0]
    source = volume[kind] or {}
    target = files / "volumes" / str(name)
    if kind == "configMap":
        _config_map(source, config_maps, target, where)
        _own(target, fs_group)
        return kind, target, True, ""
    if kind == "downwardAPI":
        _only(source, frozenset({"items", "defaultMode"}), where)
        for item in source.get("items", []):
            if "fieldRef" not in item:
                raise TranslateError(f"{where}: only fieldRef items are supported")
            content = _field_value(pod, item["fieldRef"]["fieldPath"], where)
            _write(target / item["path"], content)
        _own(target, fs_group)
        return kind, target, True, ""
    if kind == "emptyDir":
        return _empty_dir(source, target, where, fs_group)
    if kind == "hostPath":
        return kind, _host_path(source, where), False, ""
    if kind == "image":  # Kubernetes 1.31+ image volumes: the image's files, read-only
        _only(source, frozenset({"reference", "pullPolicy"}), where)
        return kind, str(source["reference"]), True, ""
    raise TranslateError(f"{where}: volume source {kind!r} not supported by the test bed")


def _config_map(
    source: Mapping[str, Any],
    config_maps: Mapping[str, Mapping[str, str]],
    target: Path,
    where: str,
) -> None:
    _only(source, frozenset({"name", "items", "defaultMode", "optional"}), where)
    data = config_maps.get(source.get("name", ""))
    if data is None:
        raise TranslateError(f"{where}: ConfigMap {source.get('name')!r} is not given")
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            raise TranslateError(f"{where}: ConfigMap has no key {item['key']!r}")
        _write(target / item["path"], data[item["key"]], item.get("mode", 0o644))


def _empty_dir(
    source: Mapping[str, Any], target: Path, where: str, fs_group: int | None
) -> _Source:
    _only(source, frozenset({"medium", "sizeLimit"}), where)
    if source.get("medium") == "Memory":
        opts = "tmpfs-mode=1777"
        if source.get("sizeLimit"):
            opts += f",tmpfs-size={_quantity_bytes(source['sizeLimit'], where)}"
        return "emptyDir", None, False, opts
    if source.get("medium"):
        raise TranslateError(f"{where}: emptyDir medium {source['medium']!r}")
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o777)  # kubelet makes emptyDirs world-writable
    _own(target, fs_group)
    return "emptyDir", target, False, ""


def _host_path(source: Mapping[str, Any], where: str) -> Path:
    _only(source, frozenset({"path", "type"}), where)
    path = Path(source["path"])
    wanted = source.get("type", "")
    if wanted == "Directory" and not path.is_dir():
        raise TranslateError(f"{where}: hostPath {path} is not a directory on this node")
    if wanted == "File" and not path.is_file():
        raise TranslateError(f"{where}: hostPath {path} is not a file on this node")
    if wanted == "CharDevice" and not path.is_char_device():
        raise TranslateError(f"{where}: hostPath {path} is not a char device on this node")
    if wanted not in ("", "Directory", "File", "CharDevice"):
        raise TranslateError(f"{where}: hostPath type {wanted!r} not supported")
    return path


def _own(root: Path, gid: int | None) -> None:
    """kubelet's fsGroup ownership: every file and directory in ``gid``, directories setgid."""
    if gid is None:
        return
    for path in [root, *root.rglob("*")]:
        os.chown(path, -1, gid)
        if path.is_dir():
            path.chmod(path.stat().st_mode | 0o2070)


def _capabilities(context: Mapping[str, Any], where: str) -> list[str]:
    caps = context.get("capabilities") or {}
    _only(caps, frozenset({"add", "drop"}), f"{where}.capabilities")
    have = set(CRI_DEFAULT_CAPABILITIES)
    drop = {c.upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    have = set() if "ALL" in drop else have - drop
    have |= {c.upper().removeprefix("CAP_") for c in caps.get("add") or []}
    if "ALL" in have or "SYS_ADMIN" in have:
        raise TranslateError(f"{where}.capabilities.add: {sorted(have)} is not least privilege")
    flags = ["--cap-drop=ALL"]
    if have:
        flags.append("--cap-add=" + ",".join(sorted(have)))
    return flags


def _security(pod_ctx: Mapping[str, Any], ctx: Mapping[str, Any], where: str) -> list[str]:
    _only(
        ctx,
        frozenset({
            "capabilities", "privileged", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
            "runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile", "procMount",
        }),
        where,
    )  # fmt: skip
    if ctx.get("privileged"):
        raise TranslateError(f"{where}.privileged: a VM pod never runs privileged")
    if ctx.get("procMount", "Default") != "Default":
        raise TranslateError(f"{where}.procMount: only Default")
    flags = _capabilities(ctx, where)
    if ctx.get("readOnlyRootFilesystem"):
        # Kubernetes mounts nothing writable over /tmp or /run: neither does this.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags.append("--security-opt=no-new-privileges")
    user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    group = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    if non_root and not user:
        raise TranslateError(f"{where}.runAsNonRoot: set but runAsUser is 0 or unset")
    if user is not None:
        flags.append(f"--user={user}" + (f":{group}" if group is not None else ""))
    seccomp = ctx.get("seccompProfile", pod_ctx.get("seccompProfile")) or {}
    if seccomp.get("type") == "Unconfined":
        flags.append("--security-opt=seccomp=unconfined")
    elif seccomp.get("type") not in (None, "RuntimeDefault"):
        raise TranslateError(f"{where}.seccompProfile: {seccomp!r} not supported")
    # No seccompProfile: podman's default profile (RuntimeDefault), stricter than a
    # kubelet without SeccompDefault.
    return flags


def _resources(
    res: Mapping[str, Any], where: str, devices: Mapping[str, tuple[str, ...]]
) -> list[str]:
    _only(res, frozenset({"limits", "requests"}), where)
    flags: list[str] = []
    limits = res.get("limits") or {}
    requests = res.get("requests") or {}
    for name in sorted(set(limits) | set(requests)):
        if name in devices:
            for path in devices[name]:
                if not os.path.exists(path):
                    raise TranslateError(
                        f"{where}: {name} maps to {path}, which this node does not have "
                        "(the pod would stay Pending)"
                    )
                flags.append(f"--device={path}")
        elif name == "memory":
            if "memory" in limits:
                flags.append(f"--memory={_quantity_bytes(limits['memory'], where)}")
        elif name == "cpu":
            if "cpu" in limits:
                flags.append(f"--cpus={_cpus(limits['cpu'], where)}")
        else:
            raise TranslateError(f"{where}: resource {name!r} not supported by the test bed")
    return flags


def _probe(probe: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "exec" not in probe:
        raise TranslateError(
            f"{where}: only exec probes can reach the launcher (its status endpoint "
            "listens on loopback only)"
        )
    return tuple(probe["exec"]["command"])


def _container(
    pod: Mapping[str, Any],
    ctr: Mapping[str, Any],
    where: str,
    *,
    sources: Mapping[str, _Source],
    devices: Mapping[str, tuple[str, ...]],
    images: Mapping[str, str],
) -> list[str]:
    """The flags one container contributes: security, resources, env, mounts, command."""
    _only(ctr, _CONTAINER_KEYS | IGNORED_CONTAINER, where)
    if ctr.get("stdin") or ctr.get("tty"):
        raise TranslateError(f"{where}: stdin/tty not supported")
    spec = pod.get("spec") or {}
    pod_ctx = spec.get("securityContext") or {}
    argv = _security(pod_ctx, ctr.get("securityContext") or {}, f"{where}.securityContext")
    groups = [*(pod_ctx.get("supplementalGroups") or []), pod_ctx.get("fsGroup")]
    argv += [f"--group-add={gid}" for gid in groups if gid is not None]
    argv += _resources(ctr.get("resources") or {}, f"{where}.resources", devices)
    for env in ctr.get("env") or []:
        if "value" in env:
            argv.append(f"--env={env['name']}={env['value']}")
        elif "fieldRef" in (env.get("valueFrom") or {}):
            value = _field_value(pod, env["valueFrom"]["fieldRef"]["fieldPath"], f"{where}.env")
            argv.append(f"--env={env['name']}={value}")
        else:
            raise TranslateError(f"{where}.env[{env.get('name')}]: only value and fieldRef")
    if ctr.get("workingDir"):
        argv.append(f"--workdir={ctr['workingDir']}")
    for mount in ctr.get("volumeMounts") or []:
        _only(
            mount, frozenset({"name", "mountPath", "readOnly", "subPath"}), f"{where}.volumeMounts"
        )
        if mount["name"] not in sources:
            raise TranslateError(f"{where}.volumeMounts: no volume {mount['name']!r}")
        kind, host, forced_ro, tmpfs = sources[mount["name"]]
        dest = mount["mountPath"]
        if kind == "image":
            if mount.get("subPath"):
                raise TranslateError(f"{where}.volumeMounts: subPath of an image volume")
            argv.append(f"--mount=type=image,source={images.get(str(host), str(host))},"
                        f"destination={dest}")  # fmt: skip
            continue
        if host is None:
            argv.append(f"--mount=type=tmpfs,destination={dest},{tmpfs}")
            continue
        assert isinstance(host, Path)
        src = host / mount["subPath"] if mount.get("subPath") else host
        ro = forced_ro or bool(mount.get("readOnly"))
        argv.append(f"--mount=type=bind,source={src},destination={dest}" + (",ro" if ro else ""))
    if ctr.get("command"):
        argv.append("--entrypoint=" + json.dumps(list(ctr["command"])))
    image = str(ctr.get("image"))
    argv.append(images.get(image, image))
    argv += [str(a) for a in ctr.get("args") or []]
    return argv


def _init_containers(
    pod: Mapping[str, Any],
    name: str,
    *,
    sources: Mapping[str, _Source],
    devices: Mapping[str, tuple[str, ...]],
    images: Mapping[str, str],
) -> tuple[tuple[str, ...], ...]:
    """Each init container's own ``podman run`` arguments (no network, the pod's volumes)."""
    inits: list[tuple[str, ...]] = []
    for i, init in enumerate((pod.get("spec") or {}).get("initContainers") or []):
        where = f"spec.initContainers[{init.get('name', i)}]"
        for key in ("readinessProbe", "livenessProbe", "startupProbe"):
            if key in init:
                raise TranslateError(f"{where}.{key}: init containers have no probes")
        for mount in init.get("volumeMounts") or []:
            if sources.get(mount.get("name"), ("", "", False, ""))[1] is None:
                raise TranslateError(
                    f"{where}.volumeMounts: a medium: Memory emptyDir shared with an init "
                    "container is not supported here"
                )
        flags = _container(pod, init, where, sources=sources, devices=devices, images=images)
        inits.append((f"--name={name}-init-{i}", "--rm", "--pull=never", "--network=none", *flags))
    return tuple(inits)


def translate(
    objects: Sequence[Mapping[str, Any]],
    files: Path,
    *,
    image: str | None = None,
    images: Mapping[str, str] | None = None,
    network: str | None = None,
    name_prefix: str = "",
    devices: Mapping[str, tuple[str, ...]] = DEVICE_RESOURCES,
) -> RunSpec:
    """The ``podman run`` arguments for the one Pod in ``objects`` (its ConfigMaps beside it).

    ``image`` replaces the image of the Pod's container wherever the Pod names it (a
    registry name → the locally built tag), ``images`` maps any other image reference
    (init containers, image volumes) to a local one; ``network`` is the podman network
    standing in for the cluster's pod network; ``files`` receives the contents of
    configMap, downwardAPI and disk emptyDir volumes and the termination-message file.
    Init containers become their own ``podman run`` (run to completion first, with the
    pod's volumes but ``--network=none``: they must not need the pod network). Raises
    :class:`TranslateError` naming the field for anything it cannot run faithfully."""
    pods = [o for o in objects if o.get("kind") == "Pod"]
    if len(pods) != 1:
        raise TranslateError(f"expected one Pod among the objects, got {len(pods)}")
    pod = pods[0]
    if pod.get("apiVersion") != "v1":
        raise TranslateError(f"Pod apiVersion {pod.get('apiVersion')!r} is not v1")
    config_maps = {
        o["metadata"]["name"]: o.get("data") or {} for o in objects if o.get("kind") == "ConfigMap"
    }
    meta = pod.get("metadata") or {}
    pod_name = meta.get("name")
    if not pod_name:
        raise TranslateError("metadata.name is missing")
    if "k8s.v1.cni.cncf.io/networks" in (meta.get("annotations") or {}):
        raise TranslateError("metadata.annotations: Multus networks cannot be attached here")
    spec = pod.get("spec") or {}
    _only(
        spec,
        IGNORED_POD_SPEC
        | {"containers", "initContainers", "volumes", "securityContext",
           "terminationGracePeriodSeconds", "hostname"},
        "spec",
    )  # fmt: skip
    containers = spec.get("containers") or []
    if len(containers) != 1:
        raise TranslateError(f"spec.containers: one container expected, got {len(containers)}")
    ctr = containers[0]
    mapped = dict(images or {})
    if image is not None:
        mapped[str(ctr.get("image"))] = image
    name = f"{name_prefix}{pod_name}"
    grace = _get(spec, "terminationGracePeriodSeconds", int, "spec", _K8S_DEFAULT_GRACE_S)
    pod_ctx = spec.get("securityContext") or {}
    _only(
        pod_ctx,
        frozenset({"sysctls", "runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile",
                   "supplementalGroups", "fsGroup", "fsGroupChangePolicy"}),
        "spec.securityContext",
    )  # fmt: skip
    fs_group = _get(pod_ctx, "fsGroup", int, "spec.securityContext")
    sources = {
        v["name"]: _volume_source(pod, v, config_maps, files, fs_group)
        for v in spec.get("volumes") or []
    }
    inits = _init_containers(pod, name, sources=sources, devices=devices, images=mapped)
    argv: list[str] = [
        f"--name={name}",
        f"--hostname={spec.get('hostname', pod_name)}",
        f"--stop-timeout={grace}",
        "--pull=never",
    ]
    if network is not None:
        argv.append(f"--network={network}")
    for sysctl in pod_ctx.get("sysctls") or []:
        key = str(sysctl["name"])
        if not key.startswith("net."):
            raise TranslateError(f"spec.securityContext.sysctls: {key} is not a net.* sysctl")
        argv.append(f"--sysctl={key}={sysctl['value']}")
    where = f"spec.containers[{ctr.get('name', 0)}]"
    termination_log: Path | None = None
    message_path = ctr.get("terminationMessagePath", _K8S_DEFAULT_TERMINATION_LOG)
    if message_path:
        # kubelet bind-mounts a fresh host file at the container's terminationMessagePath
        termination_log = files / "termination-log"
        _write(termination_log, "", 0o666)
        argv.append(f"--mount=type=bind,source={termination_log},destination={message_path}")
    probes = {
        kind: _probe(ctr[f"{kind}Probe"], f"{where}.{kind}Probe")
        for kind in ("readiness", "startup")
        if ctr.get(f"{kind}Probe")
    }
    if ctr.get("livenessProbe"):
        _probe(ctr["livenessProbe"], f"{where}.livenessProbe")  # same rule, not run here
    argv += _container(pod, ctr, where, sources=sources, devices=devices, images=mapped)
    return RunSpec(name, tuple(argv), grace, termination_log, probes, files, inits)


# --- the node, its network and its containers -------------------------------------------


@dataclass(frozen=True, slots=True)
class Network:
    """A podman network on the node: CNI bridge + host-local IPAM, IPv4 and IPv6."""

    name: str
    subnet4: str
    subnet6: str
    gateway4: str
    gateway6: str


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process in a container, as the node sees it."""

    pid: int
    name: str
    uid: int
    cap_eff: int
    cap_prm: int


@dataclass
class Node:
    """podman with this project's settings in a private netns that plays the node."""

    netns: str
    workdir: Path
    networks: list[Network] = field(default_factory=list)
    containers: list[Container] = field(default_factory=list)
    init_names: list[str] = field(default_factory=list)

    @property
    def network_dir(self) -> Path:
        return self.workdir / "cni"

    def argv(self, *args: str) -> list[str]:
        """The podman command line for ``args`` on this node."""
        return [
            "nsenter", f"--net=/run/netns/{self.netns}",
            "podman", f"--network-config-dir={self.network_dir}", *args,
        ]  # fmt: skip

    def podman(
        self, *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Run one podman command (bounded); with ``check`` a failure raises PodmanError."""
        try:
            done = subprocess.run(
                self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False,
                env=_env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            raise PodmanError(f"podman {' '.join(args)} took over {timeout:.0f} s") from err
        if check and done.returncode != 0:
            raise PodmanError(
                f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done

    def exec_in_node(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the node's netns (e.g. curl to a pod IP); not checked."""
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def network(self, name: str, subnet4: str, subnet6: str) -> Network:
        """``podman network create --ipv6`` with both subnets (gateways: the first hosts)."""
        self.podman("network", "create", "--ipv6", f"--subnet={subnet4}", f"--subnet={subnet6}",
                    name)  # fmt: skip
        inspected = json.loads(self.podman("network", "inspect", name).stdout)[0]
        gateways = {
            s["subnet"]: s["gateway"] for s in inspected.get("subnets", []) if "gateway" in s
        }
        net = Network(name, subnet4, subnet6, gateways[subnet4], gateways[subnet6])
        self.networks.append(net)
        return net

    def start(self, spec: RunSpec, log_dir: Path) -> Container:
        """``podman run`` the translated pod attached; stdout → ConsoleReader, stderr → file."""
        log_dir.mkdir(parents=True, exist_ok=True)
        for init in spec.init:  # kubelet runs them in order, each to success, first
            init_name = init[0].removeprefix("--name=")
            self.init_names.append(init_name)
            done = self.podman("run", *init, check=False, timeout=INIT_TIMEOUT_S)
            (log_dir / f"{init_name}.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise PodmanError(
                    f"init container {init_name} exited with {done.returncode}: "
                    f"{(done.stdout + done.stderr)[-2000:]}"
                )
        stderr_path = log_dir / f"{spec.name}.err"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                self.argv("run", *spec.argv),
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=_env(),
            )  # fmt: skip
        assert proc.stdout is not None
        console = ConsoleReader(proc.stdout, log_path=str(log_dir / f"{spec.name}.console"))
        container = Container(self, spec, proc, console, stderr_path)
        self.containers.append(container)
        container.wait_created(START_TIMEOUT_S)
        return container

    def close(self) -> None:
        """Remove every container and network and the node netns (errors ignored)."""
        for container in self.containers:
            container.remove()
        for name in self.init_names:
            self.podman("rm", "--force", "--time=0", name, check=False, timeout=60)
        for net in self.networks:
            self.podman("network", "rm", "--force", net.name, check=False)
            # host-local keeps its allocations per network name on the node's disk
            shutil.rmtree(f"/var/lib/cni/networks/{net.name}", ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30,
                       check=False)  # fmt: skip


@contextmanager
def node(name: str, workdir: Path) -> Iterator[Node]:
    """A fresh node netns ``name`` (loopback up) whose podman uses ``workdir``."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
    done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    if done.returncode != 0:
        raise PodmanError(f"ip netns add {name} failed: {done.stderr.strip()}")
    the_node = Node(name, workdir)
    try:
        the_node.network_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield the_node
    finally:
        the_node.close()


@dataclass
class Container:
    """A pod container started by :meth:`Node.start`."""

    node: Node
    spec: RunSpec
    proc: subprocess.Popen[bytes]  # the attached `podman run`: exits with the container
    console: ConsoleReader
    stderr_path: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def wait_created(self, timeout: float) -> None:
        """Return once podman knows the container (its network is then set up), or the
        attached client has exited; PodmanError after ``timeout`` s."""
        for _ in range(int(timeout / _POLL_S) + 1):
            if self.node.podman("container", "exists", self.name, check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                tail = self.stderr_path.read_text(errors="replace")[-2000:]
                raise PodmanError(f"podman run {self.name} exited with {self.proc.returncode}:"
                                  f"\n{tail}")  # fmt: skip
            time.sleep(_POLL_S)
        raise PodmanError(f"container {self.name} was not created within {timeout:.0f} s")

    def inspect(self) -> dict[str, Any]:
        out = json.loads(self.node.podman("container", "inspect", self.name).stdout)
        assert isinstance(out, list) and len(out) == 1
        result: dict[str, Any] = out[0]
        return result

    def addresses(self, network: Network, timeout: float = START_TIMEOUT_S) -> tuple[str, str]:
        """The pod's IPv4 and IPv6 address on ``network`` (CNI's result, once it is there)."""
        for _ in range(int(timeout / _POLL_S) + 1):
            mine = self.inspect()["NetworkSettings"]["Networks"].get(network.name) or {}
            if mine.get("IPAddress") and mine.get("GlobalIPv6Address"):
                return str(mine["IPAddress"]), str(mine["GlobalIPv6Address"])
            time.sleep(_POLL_S)
        raise PodmanError(f"{self.name} has no IPv4 and IPv6 address on {network.name}")

    def wait_for(self, kind: str, timeout: float, **kwargs: Any) -> VlLine:
        """The console's next ``VL-<kind>`` line (ConsoleReader.wait_for); when it does not
        come, the assertion carries the launcher's errors (an early exit says why)."""
        try:
            return self.console.wait_for(kind, timeout, **kwargs)
        except ConsoleTimeout as err:
            errors = [r.get("msg") for r in self.records() if r.get("level") == "error"]
            raise ConsoleTimeout(
                f"{err}; launcher exit {self.proc.poll()}, errors: {errors}"
            ) from err

    def records(self) -> list[dict[str, Any]]:
        """The launcher's JSON log lines (its stderr)."""
        out = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait(self, timeout: float) -> int:
        """The container's exit code (the attached podman run's) within ``timeout`` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = self.stderr_path.read_text(errors="replace")[-3000:]
            raise PodmanError(f"{self.name} did not exit within {timeout} s:\n{tail}") from None

    def stop(self) -> None:
        """``podman stop``: SIGTERM, SIGKILL after the Pod's grace period (kubelet's way)."""
        self.node.podman("stop", self.name, timeout=self.spec.grace_s + 30)

    def probe(self, kind: str = "readiness") -> subprocess.CompletedProcess[str]:
        """Run the Pod's exec probe as kubelet does (exec in the container)."""
        return self.node.podman("exec", self.name, *self.spec.probes[kind], check=False)

    def processes(self) -> list[ProcessInfo]:
        """Every process of the container (pid on the node, name, real uid, CapEff, CapPrm)."""
        init = int(self.inspect()["State"]["Pid"])
        if init <= 0:
            return []
        out: list[ProcessInfo] = []
        todo = [init]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                children = [
                    int(c)
                    for task in Path(f"/proc/{pid}/task").iterdir()
                    for c in (task / "children").read_text().split()
                ]
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            out.append(
                ProcessInfo(
                    pid, fields["Name"].strip(), int(fields["Uid"].split()[0]),
                    int(fields["CapEff"], 16), int(fields["CapPrm"], 16),
                )
            )  # fmt: skip
            todo += children
        return out

    def remove(self) -> None:
        """Bounded teardown: ``podman rm -f -t 0`` and the attached client reaped."""
        self.node.podman("rm", "--force", "--time=0", self.name, check=False, timeout=60)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.console.wait_closed(5)


#: What the container tier's ``pods`` fixture is: ``(objects, images=None) -> Container``.
PodStarter = Callable[..., Container]
