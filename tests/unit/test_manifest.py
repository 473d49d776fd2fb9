"""``virt-launcher manifest``: every object validated offline against the Kubernetes OpenAPI
schema (kubernetes-validate's strict JSON schemas), and one test per rule: capabilities
per binding, sysctls, device names, the overhead formula, the grace margin, the Multus
annotations, volumes, and the refusal with exit 2."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from launcher import cli
from launcher.errors import SpecError
from launcher.manifest import (
    GRACE_MARGIN_S,
    LAUNCHER_MEMORY_MIB,
    STATE_DIR,
    VFIO_MEMORY_MIB,
    VMM_MEMORY_MIB,
    VOLUMES_DIR,
    DeviceNames,
    ImageSource,
    ManifestSettings,
    build,
    capabilities,
    cpu_request,
    grace_period,
    memory_overhead,
    network_annotations,
    plan_for_manifest,
    render,
    run_options,
)
from launcher.network.multus import kubevirt_hashed_name
from launcher.spec import VmSpec, load, parse
from launcher.volumes import VolumeLayout, resolve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The oldest Kubernetes still maintained when this was written, and the newest schema
# kubernetes-validate ships; image volumes need 1.31+ (and the ImageVolume feature).
VERSIONS = ("1.30", kubernetes_validate.latest_version())
MIB = 1 << 20

# Device-plugin resources the spec cannot carry (NetworkAttachmentDefinition annotations).
RESOURCES = {
    "kubevirt-dpdk.yaml": (("nic-east", "intel.com/dpdk_vf"),),
    "kubevirt-sriov.yaml": (("nic1", "intel.com/sriov_netdevice"),),
    "virtink-sriov.yaml": (("sriov", "mellanox.com/cx5_sriov"),),
    "virtink-vdpa.yaml": (("vdpa1", "mellanox.com/vdpa"), ("vdpa2", "mellanox.com/vdpa")),
}


def objects(path: Path, **settings: Any) -> list[dict[str, Any]]:
    settings.setdefault("network_resources", RESOURCES.get(path.name, ()))
    return build(load(path), path.read_text(), ManifestSettings(**settings))


def doc(text: str) -> tuple[VmSpec, str]:
    return parse(yaml.safe_load(text)), text


def pod_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [o for o in objs if o["kind"] == "Pod"]
    return pod


def launcher_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return pod_of(objs)["spec"]["containers"][0]


def validate(obj: dict[str, Any]) -> None:
    for version in VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: t-vm, namespace: t}}
spec:
  domain:
    memory: {{guest: 1Gi}}
    devices:
      interfaces: [{interfaces}]
  networks: [{networks}]
"""
POD_NET = "{name: pod, pod: {}}"


def vmi(interfaces: str, networks: str = POD_NET, **extra: str) -> tuple[VmSpec, str]:
    text = VM.format(interfaces=interfaces, networks=networks)
    document = yaml.safe_load(text)
    for key, value in extra.items():
        document["spec"][key] = yaml.safe_load(value)
    text = yaml.safe_dump(document)
    return parse(document), text


# --- schema ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_validates_against_the_kubernetes_schema(path: Path) -> None:
    objs = objects(path)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Pod"]
    for obj in objs:
        validate(obj)
    # what is printed is what was validated
    printed = list(yaml.safe_load_all(render(objs, path)))
    assert printed == objs


@pytest.mark.parametrize(
    ("example", "settings"),
    [
        ("virtink-pod-masquerade.yaml", {"ip_families": "ipv4"}),
        ("virtink-pod-bridge.yaml", {"hypervisor": "qemu", "accel": "tcg"}),
        ("kubevirt-sriov.yaml", {"network_resources_injected": True, "network_resources": ()}),
        ("kubevirt-linux-bridge-secondary.yaml", {"restart_policy": "OnFailure"}),
        ("kubevirt-dpdk.yaml", {"cpu_allocation_ratio": 10, "probes": False}),
        ("demo-vm.yaml", {"image_source": ImageSource.VOLUME, "namespace": "vms"}),
        (
            "demo-vm.yaml",
            {"devices": DeviceNames(kvm="example.com/kvm", tun=None, vhost_net=None)},
        ),
    ],
)
def test_variants_validate(example: str, settings: dict[str, Any]) -> None:
    for obj in objects(EXAMPLES / example, **settings):
        for version in (kubernetes_validate.latest_version(),):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_a_wrong_object() -> None:
    pod = pod_of(objects(EXAMPLES / "demo-vm.yaml"))
    validate(pod)
    misspelt = copy.deepcopy(pod)
    misspelt["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    wrong_type = copy.deepcopy(pod)
    wrong_type["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "NET_ADMIN"
    no_name = copy.deepcopy(pod)
    del no_name["spec"]["containers"][0]["name"]
    for bad in (misspelt, wrong_type, no_name):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    # image volumes are not in 1.30's API: the version matters, and the docs say so
    image = pod_of(objects(EXAMPLES / "demo-vm.yaml", image_source=ImageSource.VOLUME))
    kubernetes_validate.validate(image, "1.33", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(image, "1.30", strict=True)


# --- capabilities per binding ------------------------------------------------------------

DHCP_CAPS = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID", "KILL")


@pytest.mark.parametrize(
    ("interfaces", "networks", "expected"),
    [
        ("{name: pod, bridge: {}}", POD_NET, DHCP_CAPS),
        ("{name: pod, masquerade: {}}", POD_NET, DHCP_CAPS),
        (
            "{name: s, sriov: {}}",
            "{name: s, multus: {networkName: vf}}",
            ("NET_ADMIN", "SYS_RESOURCE", "SETUID", "SETGID", "KILL"),
        ),
        ("{name: s, bridge: {}}", "{name: s, multus: {networkName: br}}", DHCP_CAPS),
    ],
    ids=["bridge", "masquerade", "sriov", "secondary-bridge"],
)
def test_capabilities_per_binding(
    interfaces: str, networks: str, expected: tuple[str, ...]
) -> None:
    spec, text = vmi(interfaces, networks)
    assert capabilities(spec, plan_for_manifest(spec)) == expected
    resources = (("s", "example.com/vf"),) if "multus" in networks else ()
    sc = launcher_of(build(spec, text, ManifestSettings(network_resources=resources)))[
        "securityContext"
    ]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": list(expected)}
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsUser"] == 0


def test_why_each_capability_follows_the_plan() -> None:
    """NET_RAW/NET_BIND_SERVICE only because DHCP/RA are served: a plan whose NIC serves
    nothing (a plain-L2 bridge) needs neither."""
    spec, _ = vmi("{name: s, bridge: {}}", "{name: s, multus: {networkName: br}}")
    network = plan_for_manifest(spec)
    nic = network.nics[0]
    assert nic.dhcp4 is not None
    quiet = type(network)(nics=(type(nic)(**{**_fields(nic), "dhcp4": None}),))
    assert capabilities(spec, quiet) == ("NET_ADMIN", "SETUID", "SETGID", "KILL")


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


def test_a_vdpa_only_vm_needs_no_dhcp_capability_and_no_memlock() -> None:
    spec, _ = vmi("{name: v, sriov: {}}", "{name: v, multus: {networkName: x}}")
    virtink = load(EXAMPLES / "virtink-vdpa.yaml")
    only_vdpa = type(virtink)(
        **{
            **_fields(virtink),
            "interfaces": tuple(i for i in virtink.interfaces if i.name != "pod"),
            "networks": tuple(n for n in virtink.networks if n.name != "pod"),
        }
    )
    assert capabilities(only_vdpa, plan_for_manifest(only_vdpa)) == (
        "NET_ADMIN",
        "SETUID",
        "SETGID",
        "CHOWN",  # its writable containerDisk's overlay becomes uid 107's
        "KILL",
    )
    assert "SYS_RESOURCE" in capabilities(spec, plan_for_manifest(spec))


# --- CHOWN: only for a disk file the VMM user is given -----------------------------------

DISKS_VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: t-disks, namespace: t}}
spec:
  domain:
    memory: {{guest: 1Gi}}
    devices:
      interfaces: [{{name: pod, bridge: {{}}}}]
      disks: [{disks}]
  networks: [{{name: pod, pod: {{}}}}]
  volumes: [{volumes}]
"""


def disks_vm(disks: str, volumes: str) -> tuple[VmSpec, str]:
    return doc(DISKS_VM.format(disks=disks, volumes=volumes))


def added(objs: list[dict[str, Any]]) -> list[str]:
    caps = launcher_of(objs)["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    return list(caps["add"])


def test_a_diskless_vm_gets_no_chown() -> None:
    spec, text = vmi("{name: pod, bridge: {}}")
    assert not spec.disks
    objs = build(spec, text)
    for obj in objs:
        validate(obj)
    assert added(objs) == list(DHCP_CAPS) and "CHOWN" not in added(objs)


@pytest.mark.parametrize(
    "volume",
    [
        "emptyDisk: {capacity: 1Gi}",
        "containerDisk: {image: example.com/os:1}",
        "persistentVolumeClaim: {claimName: c}",
        "dataVolume: {name: dv}",
        "hostDisk: {path: /var/lib/d.img, type: Disk}",
    ],
    ids=["emptyDisk", "containerDisk", "pvc", "dataVolume", "hostDisk"],
)
def test_a_writable_disk_file_gets_chown(volume: str) -> None:
    """The VMM user (107) is given the file: the emptyDisk, the containerDisk's overlay,
    the PVC's or dataVolume's disk.img (filesystem mode), the hostDisk file."""
    spec, text = disks_vm("{name: d, disk: {}}", f"{{name: d, {volume}}}")
    objs = build(spec, text)
    for obj in objs:
        validate(obj)
    assert added(objs) == [
        *("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "SETUID", "SETGID"),
        "CHOWN",
        "KILL",
    ]


@pytest.mark.parametrize(
    ("disks", "volumes", "block"),
    [
        (
            "{name: d, disk: {readonly: true}}",
            "{name: d, persistentVolumeClaim: {claimName: c}}",
            (),
        ),
        ("{name: d, cdrom: {}}", "{name: d, containerDisk: {image: example.com/iso:1}}", ()),
        ("{name: d, disk: {}}", "{name: d, cloudInitNoCloud: {userData: x}}", ()),
        ("{name: d, disk: {}}", "{name: d, persistentVolumeClaim: {claimName: c}}", ("d",)),
        ("{name: d, disk: {}}", "{name: d, dataVolume: {name: dv}}", ("d",)),
    ],
    ids=["read-only-pvc", "cdrom", "cloud-init", "block-pvc", "block-dataVolume"],
)
def test_a_disk_the_vmm_user_is_not_given_needs_no_chown(
    disks: str, volumes: str, block: tuple[str, ...]
) -> None:
    """Read-only disks, CD-ROMs and the cloud-init ISO are only checked readable; a block
    device is checked writable, never chowned."""
    spec, text = disks_vm(disks, volumes)
    objs = build(spec, text, ManifestSettings(block_volumes=block))
    for obj in objs:
        validate(obj)
    assert "CHOWN" not in added(objs)
    assert added(objs) == list(DHCP_CAPS)


# --- sysctls -----------------------------------------------------------------------------

NAMESPACED_NET = re.compile(r"^net\.(ipv4|ipv6)\.[a-z0-9_.-]+$")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_sysctl_is_a_namespaced_net_sysctl(path: Path) -> None:
    """The contract with NetworkPlan.sysctls: only network-namespaced net.* sysctls reach
    the pod (a non-namespaced one would change the node, and kubelet refuses it)."""
    sysctls = pod_of(objects(path))["spec"]["securityContext"].get("sysctls", [])
    for item in sysctls:
        assert NAMESPACED_NET.match(item["name"]), item
        assert isinstance(item["value"], str)
    assert len({s["name"] for s in sysctls}) == len(sysctls)


def test_sysctls_are_the_plans() -> None:
    spec, text = vmi("{name: pod, masquerade: {}}")
    network = plan_for_manifest(spec)
    security = pod_of(build(spec, text))["spec"]["securityContext"]
    assert security["sysctls"] == [{"name": s.key, "value": s.value} for s in network.sysctls]
    names = {s["name"] for s in security["sysctls"]}
    assert "net.ipv6.conf.all.forwarding" in names  # what netlink cannot set per interface
    v4 = pod_of(build(spec, text, ManifestSettings(ip_families="ipv4")))["spec"]
    assert not [
        s
        for s in v4["securityContext"].get("sysctls", [])
        if s["name"].startswith("net.ipv6.conf.all")
    ]
    v6 = pod_of(build(spec, text, ManifestSettings(ip_families="ipv6")))["spec"]
    assert "net.ipv4.ip_forward" not in {
        s["name"] for s in v6["securityContext"].get("sysctls", [])
    }


# --- devices ----------------------------------------------------------------------------


def test_device_resources_default_renamed_and_left_out() -> None:
    spec, text = vmi("{name: pod, bridge: {}}")
    limits = launcher_of(build(spec, text))["resources"]["limits"]
    assert limits == {
        "devices.kubevirt.io/kvm": "1",
        "devices.kubevirt.io/tun": "1",
        "devices.kubevirt.io/vhost-net": "1",
    }
    renamed = ManifestSettings(devices=DeviceNames("a.io/kvm", "a.io/tun", None))
    res = launcher_of(build(spec, text, renamed))["resources"]
    assert res["limits"] == {"a.io/kvm": "1", "a.io/tun": "1"}
    assert res["requests"].items() >= res["limits"].items()  # extended resources: equal
    tcg = launcher_of(build(spec, text, ManifestSettings(accel="tcg")))["resources"]["limits"]
    assert "devices.kubevirt.io/kvm" not in tcg
    ch = launcher_of(build(spec, text, ManifestSettings(hypervisor="cloud-hypervisor")))
    assert "devices.kubevirt.io/vhost-net" not in ch["resources"]["limits"]
    assert ch["args"][-2:] == ["--hypervisor", "cloud-hypervisor"]
    sriov, stext = vmi("{name: s, sriov: {}}", "{name: s, multus: {networkName: vf}}")
    only_vf = launcher_of(
        build(sriov, stext, ManifestSettings(network_resources=(("s", "x.io/vf"),)))
    )
    assert only_vf["resources"]["limits"] == {"devices.kubevirt.io/kvm": "1", "x.io/vf": "1"}
    assert only_vf["env"] == [{"name": "KUBEVIRT_RESOURCE_NAME_s", "value": "x.io/vf"}]


def test_device_flags_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "manifest",
            "--spec",
            str(EXAMPLES / "demo-vm.yaml"),
            "--kvm-resource",
            "example.com/kvm",
            "--vhost-net-resource",
            "none",
            "--image",
            "registry.example/vl:1",
        ]
    )
    assert code == 0
    pod = pod_of(list(yaml.safe_load_all(capsys.readouterr().out)))
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example/vl:1"
    assert set(container["resources"]["limits"]) == {"example.com/kvm", "devices.kubevirt.io/tun"}


# --- memory, CPU, grace ------------------------------------------------------------------


def test_memory_overhead_formula() -> None:
    spec, _ = vmi("{name: pod, bridge: {}}")
    fixed = VMM_MEMORY_MIB + LAUNCHER_MEMORY_MIB
    assert memory_overhead(spec) == (1 << 30) // 512 + (8 + fixed) * MIB
    big = type(spec)(**{**_fields(spec), "memory_bytes": 8 << 30, "cpu": type(spec.cpu)(cores=4)})
    assert memory_overhead(big) == (8 << 30) // 512 + (32 + fixed) * MIB
    vf, _ = vmi("{name: s, sriov: {}}", "{name: s, multus: {networkName: vf}}")
    assert memory_overhead(vf) == memory_overhead(spec) + VFIO_MEMORY_MIB * MIB
    res = launcher_of(build(*vmi("{name: pod, bridge: {}}")))["resources"]
    assert res["requests"]["memory"] == f"{1024 + 2 + 8 + fixed}Mi"
    assert "memory" not in res["limits"]  # Burstable unless CPUs are dedicated


def test_cpu_request() -> None:
    spec, text = vmi("{name: pod, bridge: {}}")
    four = type(spec)(**{**_fields(spec), "cpu": type(spec.cpu)(sockets=2, cores=2)})
    assert cpu_request(spec) == "1100m"
    assert cpu_request(four) == "4100m"
    assert cpu_request(four, 10) == "500m"
    assert cpu_request(four, 3) == "1434m"  # rounded up
    dedicated = type(spec)(**{**_fields(four), "cpu": type(spec.cpu)(cores=4, dedicated=True)})
    assert cpu_request(dedicated) == "4"
    container = launcher_of(build(dedicated, text))
    assert (
        container["resources"]["limits"]["cpu"] == container["resources"]["requests"]["cpu"] == "4"
    )
    assert (
        container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    )


def test_grace_period_is_the_specs_plus_the_margin() -> None:
    istio = load(EXAMPLES / "kubevirt-istio.yaml")
    assert grace_period(istio) == 180 + GRACE_MARGIN_S == 195
    assert (
        pod_of(objects(EXAMPLES / "kubevirt-istio.yaml"))["spec"]["terminationGracePeriodSeconds"]
        == 195
    )
    demo = pod_of(objects(EXAMPLES / "demo-vm.yaml", grace_margin_s=5))
    assert demo["spec"]["terminationGracePeriodSeconds"] == 10 + 5


# --- Multus -------------------------------------------------------------------------------


def test_multus_annotation_asks_for_the_names_the_launcher_looks_for() -> None:
    kubevirt = load(EXAMPLES / "kubevirt-linux-bridge-secondary.yaml")
    ann = network_annotations(kubevirt)
    assert json.loads(ann["k8s.v1.cni.cncf.io/networks"]) == [
        {
            "name": "a-bridge-network",
            "namespace": "default",
            "interface": kubevirt_hashed_name("bridge-net"),
        }
    ]
    virtink = load(EXAMPLES / "virtink-vdpa.yaml")
    elements = json.loads(network_annotations(virtink)["k8s.v1.cni.cncf.io/networks"])
    assert [(e["name"], e["interface"]) for e in elements] == [
        ("offload-ovn1", "net1"),
        ("offload-ovn2", "net2"),
    ]
    absent = load(EXAMPLES / "kubevirt-hotplug-absent.yaml")
    assert network_annotations(absent) == {}  # the unplugged network is not attached
    assert "k8s.v1.cni.cncf.io/networks" not in pod_of(
        objects(EXAMPLES / "virtink-pod-bridge.yaml")
    )["metadata"].get("annotations", {})


def test_multus_default_network_namespace_and_sriov_mac() -> None:
    spec, text = vmi(
        "{name: d, bridge: {}}, {name: s, sriov: {}, macAddress: '02:00:00:00:00:aa'}",
        "{name: d, multus: {networkName: other/main, default: true}}, "
        "{name: s, multus: {networkName: vf}}",
    )
    ann = pod_of(build(spec, text, ManifestSettings(network_resources=(("s", "x.io/vf"),))))[
        "metadata"
    ]["annotations"]
    assert ann["v1.multus-cni.io/default-network"] == "other/main"
    (vf,) = json.loads(ann["k8s.v1.cni.cncf.io/networks"])
    assert vf == {
        "name": "vf",
        "namespace": "t",
        "interface": kubevirt_hashed_name("s"),
        "mac": "02:00:00:00:00:aa",
    }


def test_pod_keeps_the_specs_labels_and_annotations() -> None:
    meta = pod_of(objects(EXAMPLES / "kubevirt-istio.yaml"))["metadata"]
    assert meta["annotations"]["sidecar.istio.io/inject"] == "true"
    assert meta["labels"]["app"] == "vm-istio"
    assert meta["labels"]["app.kubernetes.io/instance"] == "vm-istio"


# --- volumes ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_file_run_looks_for_is_mounted(path: Path) -> None:
    """The run arguments are the real CLI's, and every file ``run`` resolves (kernel,
    disks, made files) lies on a volume of the container."""
    objs = objects(path)
    container = launcher_of(objs)
    options = cli.parse_args(container["args"])
    assert options.command == "run"
    spec_mount = next(m for m in container["volumeMounts"] if m["name"] == "vl-spec")
    assert options.spec_path == Path(spec_mount["mountPath"]) / "vm.yaml"
    configmap = objs[0]
    assert parse(yaml.safe_load(configmap["data"]["vm.yaml"])) == load(path)
    assert options.run_args["volumes_dir"] == Path(VOLUMES_DIR)
    assert options.run_args["state_dir"] == Path(STATE_DIR)
    places = [m["mountPath"] for m in container["volumeMounts"]]
    places += [d["devicePath"] for d in container.get("volumeDevices", [])]
    layout = VolumeLayout(volumes_dir=Path(VOLUMES_DIR), scratch_dir=Path(STATE_DIR))
    for made in resolve(load(path), layout).files:
        # a writable containerDisk's overlay is made in the state dir, its image is mounted
        for file in (made,) if made.backing is None else (made, made.backing):
            best = max(
                (p for p in places if file.path == p or file.path.startswith(p + "/")), key=len
            )
            in_state = file.kind.value in ("emptyDisk", "cloudInit") or file.backing is not None
            assert best != STATE_DIR or in_state, (file, best)
            assert file.backing is None or best == STATE_DIR, (file, best)


def test_container_disks_and_kernels_are_copied_by_unprivileged_init_containers() -> None:
    pod = pod_of(objects(EXAMPLES / "virtink-pod-bridge.yaml"))["spec"]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["vl-tools", "vl-copy-kernel", "vl-copy-disk-0"]
    assert init["vl-tools"]["command"] == [
        "cp",
        "/bin/busybox",
        "/var/run/virt-launcher-tools/busybox",
    ]
    kernel = init["vl-copy-kernel"]
    assert kernel["image"] == "smartxworks/virtink-kernel-5.15.12"
    assert kernel["command"][-1] == "/vmlinux"
    disk = init["vl-copy-disk-0"]
    assert disk["image"] == "smartxworks/virtink-container-disk-ubuntu"
    assert disk["command"][-2:] == ["/disk", "disk.img"]
    for c in init.values():
        sc = c["securityContext"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False and sc["readOnlyRootFilesystem"] is True
    kubevirt = pod_of(objects(EXAMPLES / "demo-vm.yaml"))["spec"]
    (copy_kernel,) = [c for c in kubevirt["initContainers"] if c["name"] == "vl-copy-kernel"]
    assert copy_kernel["command"][-2:] == ["/boot/vmlinuz", "/boot/initrd.img"]
    fedora = pod_of(objects(EXAMPLES / "kubevirt-masquerade-ports.yaml"))["spec"]
    (copy_disk,) = [c for c in fedora["initContainers"] if c["name"].startswith("vl-copy-disk")]
    assert copy_disk["command"][-1] == "/disk"  # KubeVirt images: the one file in /disk/


def test_pvc_datavolume_hostdisk_and_block_volumes() -> None:
    text = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: vols, namespace: t}
spec:
  domain:
    memory: {guest: 1Gi}
    devices:
      disks:
        - {name: root, disk: {}}
        - {name: data, disk: {}}
        - {name: dv, disk: {}}
        - {name: host, disk: {}}
        - {name: made, disk: {}}
        - {name: cd, cdrom: {}}
  volumes:
    - {name: root, persistentVolumeClaim: {claimName: root-pvc}}
    - {name: data, persistentVolumeClaim: {claimName: data-pvc, readOnly: true}}
    - {name: dv, dataVolume: {name: my-dv}}
    - {name: host, hostDisk: {path: /var/lib/images/a.img, type: Disk}}
    - {name: made, hostDisk: {path: /var/lib/images/b.img, type: DiskOrCreate, capacity: 1Gi}}
    - {name: cd, containerDisk: {image: example.com/iso:1}}
"""
    spec = parse(yaml.safe_load(text))
    pod = pod_of(build(spec, text, ManifestSettings(block_volumes=("dv",))))
    validate(pod)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["vl-disk-0"] == {
        "name": "vl-disk-0",
        "persistentVolumeClaim": {"claimName": "root-pvc"},
    }
    assert volumes["vl-disk-1"]["persistentVolumeClaim"] == {
        "claimName": "data-pvc",
        "readOnly": True,
    }
    assert volumes["vl-disk-2"]["persistentVolumeClaim"] == {"claimName": "my-dv"}
    assert volumes["vl-disk-3"]["hostPath"] == {"path": "/var/lib/images/a.img", "type": "File"}
    assert volumes["vl-disk-4"]["hostPath"] == {
        "path": "/var/lib/images",
        "type": "DirectoryOrCreate",
    }
    container = pod["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "vl-disk-2", "devicePath": f"{VOLUMES_DIR}/dv"}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["vl-disk-0"]["mountPath"] == f"{VOLUMES_DIR}/root"
    assert mounts["vl-disk-1"]["readOnly"] is True
    assert mounts["vl-disk-3"]["mountPath"] == "/var/lib/images/a.img"
    # image volumes: read-only disks only
    image = pod_of(build(spec, text, ManifestSettings(image_source=ImageSource.VOLUME)))
    volumes = {v["name"]: v for v in image["spec"]["volumes"]}
    assert volumes["vl-disk-5"]["image"] == {"reference": "example.com/iso:1"}
    assert "initContainers" not in image["spec"]


# --- refusal ----------------------------------------------------------------------------


def test_a_spec_that_cannot_run_is_refused_with_every_reason() -> None:
    text = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: Bad_Name, namespace: t}
spec:
  domain:
    memory: {guest: 1Gi}
    devices:
      interfaces:
        - {name: default, masquerade: {}, mtu: 9000}
        - {name: vf, sriov: {}}
      disks: [{name: root, disk: {}}]
  networks:
    - {name: default, pod: {}}
    - {name: vf, multus: {networkName: sriov-net}}
  volumes:
    - {name: root, containerDisk: {image: example.com/disk:1}}
"""
    spec = parse(yaml.safe_load(text))
    with pytest.raises(SpecError) as caught:
        build(
            spec,
            text,
            ManifestSettings(image_source=ImageSource.VOLUME, block_volumes=("root",)),
        )
    lines = caught.value.lines()
    paths = [line.split(": ", 1)[0] for line in lines]
    assert paths == [
        "metadata.name",
        "spec.domain.devices.interfaces[0].mtu",
        "--block-volume",
        "spec.networks[1].multus.networkName",
    ], lines
    assert "9000 is above the MTU 1450" in lines[1] and "--network-resource vf=" in lines[3]


def test_refusal_is_exit_2_on_stderr_and_nothing_on_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "vm.yaml"
    path.write_text((EXAMPLES / "kubevirt-sriov.yaml").read_text())
    assert cli.main(["manifest", "--spec", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("spec.template.spec.networks[0].multus.networkName: the sriov network")
    assert cli.main(["manifest", "--spec", str(path), "--network-resource", "nic1"]) == 2
    assert capsys.readouterr().err.startswith("--network-resource: 'nic1' is not NETWORK=RESOURCE")
    assert cli.main(["manifest", "--spec", str(path), "--network-resource", "nic1=a.io/vf"]) == 0
    assert "a.io/vf" in capsys.readouterr().out
    path.write_text("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec: {}\n")
    assert cli.main(["manifest", "--spec", str(path)]) == 2  # an invalid spec: validate's lines
    assert capsys.readouterr().err.startswith("metadata: is required")


def test_another_namespace_is_written_into_the_spec_copy() -> None:
    objs = objects(EXAMPLES / "virtink-pod-masquerade.yaml", namespace="vms")
    assert {o["metadata"]["namespace"] for o in objs} == {"vms"}
    copy_spec = parse(yaml.safe_load(objs[0]["data"]["vm.yaml"]))
    assert copy_spec.namespace == "vms"
    assert copy_spec.name == "ubuntu-masquerade"
    same = objects(EXAMPLES / "virtink-pod-masquerade.yaml")
    assert same[0]["data"]["vm.yaml"] == (EXAMPLES / "virtink-pod-masquerade.yaml").read_text()


def test_probes_are_exec_probes_the_cli_parses() -> None:
    container = launcher_of(objects(EXAMPLES / "demo-vm.yaml"))
    for kind, check in (
        ("startupProbe", "live"),
        ("livenessProbe", "live"),
        ("readinessProbe", "ready"),
    ):
        command = container[kind]["exec"]["command"]
        assert command[0] == "virt-launcher"
        options = cli.parse_args(command[1:])
        assert (options.command, options.status_args["check"]) == ("status", check)
    bare = launcher_of(objects(EXAMPLES / "demo-vm.yaml", probes=False))
    assert "livenessProbe" not in bare and "readinessProbe" not in bare


@pytest.mark.parametrize(
    "settings",
    [{}, {"hypervisor": "qemu", "accel": "tcg"}, {"hypervisor": "cloud-hypervisor"}],
    ids=["defaults", "qemu-tcg", "cloud-hypervisor"],
)
def test_the_pods_run_args_are_the_options_the_plan_was_made_with(
    settings: dict[str, Any],
) -> None:
    """The capabilities and sysctls come from a plan made with run_options(); the Pod's
    args, parsed as run parses them, give exactly those options."""
    container = launcher_of(objects(EXAMPLES / "demo-vm.yaml", **settings))
    parsed = cli.parse_args(container["args"])
    assert parsed.command == "run"
    listen = cli._listen(parsed)
    assert cli._run_options(parsed, listen) == run_options(ManifestSettings(**settings))


def test_a_spec_too_large_for_a_configmap_is_refused() -> None:
    path = EXAMPLES / "kubevirt-masquerade-ports.yaml"
    text = path.read_text() + "#" + "x" * (1 << 20) + "\n"
    with pytest.raises(SpecError) as caught:
        build(load(path), text, ManifestSettings(), str(path))
    assert caught.value.lines()[0].startswith(f"{path}: the spec is 1")
    assert "a ConfigMap holds at most 1048576" in caught.value.lines()[0]


def test_a_writable_container_disk_can_come_from_a_read_only_image_volume() -> None:
    """run never writes a containerDisk (the guest writes to a qcow2 overlay in the state
    dir), so a writable disk may use a read-only image volume."""
    pod = pod_of(objects(EXAMPLES / "kubevirt-hotplug.yaml", image_source=ImageSource.VOLUME))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    images = [v for v in volumes.values() if "image" in v]
    assert [v["image"]["reference"] for v in images] == ["quay.io/containerdisks/fedora:40"]
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    disk = [m for m in mounts if m["name"] == images[0]["name"]]
    assert disk == [
        {"name": images[0]["name"], "mountPath": disk[0]["mountPath"], "readOnly": True}
    ]
    assert disk[0]["mountPath"].endswith("/containerdisk")
    kubernetes_validate.validate(pod, "1.33", strict=True)
