"""One test per validation rule: the exact path and message of each problem."""

from __future__ import annotations

import ipaddress

import pytest

from launcher.spec import Bridge, Masquerade, MultusNetwork, Protocol
from tests.unit.spec.helpers import (
    DEV,
    INST,
    VM,
    kubevirt_vm,
    kubevirt_vmi,
    ok,
    problems,
    virtink,
    vmi_of,
)

# -- interfaces and networks -----------------------------------------------------------


def test_interface_needs_network_of_same_name() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"].append({"name": "extra", "bridge": {}})
    assert problems(doc) == [
        f'{INST}.interfaces[1].name: interface "extra" has no network of the same name '
        "in spec.networks"
    ]


def test_network_needs_interface_of_same_name() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["networks"].append({"name": "sec", "multus": {"networkName": "nad"}})
    assert problems(doc) == [
        f'{VM}.networks[1].name: network "sec" has no interface of the same name in '
        f"{DEV}.interfaces"
    ]


def test_two_bindings_refused() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0]["masquerade"] = {}
    assert problems(doc) == [
        f"{INST}.interfaces[0]: has 2 bindings (bridge, masquerade); exactly one is allowed"
    ]


def test_no_binding_means_bridge() -> None:
    doc = virtink()
    del doc["spec"]["instance"]["interfaces"][0]["bridge"]
    assert ok(doc).interfaces[0].binding == Bridge()


def test_network_needs_exactly_one_source() -> None:
    doc = virtink()
    doc["spec"]["networks"][0]["multus"] = {"networkName": "x"}
    assert problems(doc) == [
        "spec.networks[0]: has 2 network sources (pod, multus); exactly one is allowed"
    ]
    doc = virtink()
    del doc["spec"]["networks"][0]["pod"]
    assert problems(doc) == ["spec.networks[0]: needs a source: pod or multus"]


def test_masquerade_only_on_pod_network() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0] = {"name": "pod", "masquerade": {}}
    doc["spec"]["networks"][0] = {"name": "pod", "multus": {"networkName": "nad1"}}
    assert problems(doc) == [
        f'{INST}.interfaces[0].masquerade: masquerade needs the pod network, but "pod" is '
        "a multus network"
    ]


def test_sriov_not_on_pod_network() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0] = {"name": "default", "sriov": {}}
    assert problems(doc) == [
        f"{DEV}.interfaces[0].sriov: sriov needs a multus (secondary) network, but "
        '"default" is the pod network'
    ]


def test_at_most_one_pod_network() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"].append({"name": "pod2", "bridge": {}})
    doc["spec"]["networks"].append({"name": "pod2", "pod": {}})
    assert problems(doc) == [
        'spec.networks[1].pod: "pod2" is a second pod network (spec.networks[0].pod is the first)'
    ]


def test_multus_default_conflicts_with_pod_network() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["domain"]["devices"]["interfaces"].append({"name": "sec", "bridge": {}})
    vmi["networks"].append({"name": "sec", "multus": {"networkName": "nad", "default": True}})
    assert problems(doc) == [
        f"{VM}.networks[1].multus.default: a multus default network replaces the pod "
        f"network, so it cannot be used together with the pod network {VM}.networks[0].pod"
    ]


def test_duplicate_interface_and_network_names() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"].append({"name": "pod", "bridge": {}})
    doc["spec"]["networks"].append({"name": "pod", "multus": {"networkName": "x"}})
    assert problems(doc) == [
        f'{INST}.interfaces[1].name: interface name "pod" is already used by '
        f"{INST}.interfaces[0].name",
        'spec.networks[1].name: network name "pod" is already used by spec.networks[0].name',
    ]


def test_invalid_name() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0]["name"] = "bad name!"
    lines = problems(doc)
    assert lines[0] == (
        f'{INST}.interfaces[0].name: "bad name!" is not a valid name (1-63 letters, digits, '
        "'-', '.' or '_', starting and ending with a letter or digit)"
    )


def test_hot_unplug_only_bridge_on_secondary() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0]["state"] = "absent"
    assert problems(doc) == [
        f'{DEV}.interfaces[0].state: "absent" (hot unplug) is only supported for bridge and '
        'managedtap interfaces on secondary networks, not for "default" (masquerade on the pod '
        "network)"
    ]
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0]["state"] = "gone"
    assert problems(doc) == [f'{DEV}.interfaces[0].state: "gone" is not one of absent, down, up']


# -- MAC addresses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mac", "message"),
    [
        ("zz:11:22:33:44:55", '"zz:11:22:33:44:55" is not a MAC address'),
        ("02:11:22:33:44", '"02:11:22:33:44" is not a MAC address'),
        ("02:11-22:33:44:55", '"02:11-22:33:44:55" is not a MAC address'),
        ("01:00:5e:00:00:01", '"01:00:5e:00:00:01" is a multicast MAC address'),
        ("FF-FF-FF-FF-FF-FF", '"FF-FF-FF-FF-FF-FF" is the broadcast MAC address'),
        ("00:00:00:00:00:00", '"00:00:00:00:00:00" is the all-zero MAC address'),
    ],
)
def test_bad_mac_refused(mac: str, message: str) -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0]["mac"] = mac
    assert problems(doc) == [f"{INST}.interfaces[0].mac: {message}"]


def test_mac_normalized_from_either_form() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0]["mac"] = "52-54-00-AB-CD-EF"
    assert ok(doc).interfaces[0].mac == "52:54:00:ab:cd:ef"
    doc["spec"]["instance"]["interfaces"][0]["mac"] = "52:54:00:AB:CD:EF"
    assert ok(doc).interfaces[0].mac == "52:54:00:ab:cd:ef"


def test_duplicate_mac_refused_across_forms() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["domain"]["devices"]["interfaces"][0]["macAddress"] = "02:00:00:00:00:0A"
    vmi["domain"]["devices"]["interfaces"].append(
        {"name": "sec", "bridge": {}, "macAddress": "02-00-00-00-00-0a"}
    )
    vmi["networks"].append({"name": "sec", "multus": {"networkName": "nad"}})
    assert problems(doc) == [
        f'{DEV}.interfaces[1].macAddress: MAC address "02:00:00:00:00:0a" is already used '
        f"by {DEV}.interfaces[0].macAddress"
    ]


# -- masquerade CIDR and ports -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("10.0.2.0/31", '"10.0.2.0/31" is too small: it needs at least 4 addresses'),
        ("fd00::/127", '"fd00::/127" is too small: it needs at least 4 addresses'),
        ("10.0.2.1/30", '"10.0.2.1/30" has host bits set (the network is 10.0.2.0/30)'),
        ("10.0.2.0", '"10.0.2.0" has no prefix length (like 10.0.2.0/30)'),
        ("banana", '"banana" is not a CIDR (like 10.0.2.0/30)'),
    ],
)
def test_bad_masquerade_cidr(cidr: str, message: str) -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0] = {"name": "pod", "masquerade": {"cidr": cidr}}
    assert problems(doc) == [f"{INST}.interfaces[0].masquerade.cidr: {message}"]


def test_masquerade_cidr_ipv4_or_ipv6() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0] = {"name": "pod", "masquerade": {"cidr": "fd00::/126"}}
    binding = ok(doc).interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert binding.cidr6 == ipaddress.IPv6Network("fd00::/126")
    assert binding.cidr4 == ipaddress.IPv4Network("10.0.2.0/30")
    doc["spec"]["instance"]["interfaces"][0]["masquerade"]["cidr"] = "192.168.7.0/29"
    binding = ok(doc).interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert binding.cidr4 == ipaddress.IPv4Network("192.168.7.0/29")
    assert binding.cidr6 == ipaddress.IPv6Network("fd10:0:2::/120")


def test_kubevirt_vm_network_cidrs_apply_to_masquerade() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["networks"][0]["pod"] = {
        "vmNetworkCIDR": "10.11.0.0/24",
        "vmIPv6NetworkCIDR": "fd99::/64",
    }
    binding = ok(doc).interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert (str(binding.cidr4), str(binding.cidr6)) == ("10.11.0.0/24", "fd99::/64")
    vmi_of(doc)["networks"][0]["pod"] = {"vmNetworkCIDR": "fd99::/64"}
    assert problems(doc) == [f'{VM}.networks[0].pod.vmNetworkCIDR: "fd99::/64" is not an IPv4 CIDR']


def test_ports_range_protocol_and_uniqueness() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0]["ports"] = [
        {"port": 80},
        {"port": 80, "protocol": "UDP"},
        {"port": 80, "protocol": "TCP", "name": "again"},
        {"port": 0},
        {"port": 65536},
        {"port": 22, "protocol": "SCTP"},
        {"name": "noport"},
    ]
    base = f"{DEV}.interfaces[0].ports"
    assert problems(doc) == [
        f"{base}[2].port: TCP port 80 is already forwarded by {base}[0]",
        f"{base}[3].port: 0 is less than 1",
        f"{base}[4].port: 65536 is greater than 65535",
        f'{base}[5].protocol: "SCTP" is not one of TCP, UDP',
        f"{base}[6].port: is required",
    ]


def test_ports_normalized() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0]["ports"] = [
        {"port": 80, "name": "http"},
        {"port": 53, "protocol": "udp"},
    ]
    binding = ok(doc).interfaces[0].binding
    assert isinstance(binding, Masquerade)
    assert [(p.port, p.protocol, p.name) for p in binding.ports] == [
        (80, Protocol.TCP, "http"),
        (53, Protocol.UDP, None),
    ]


def test_ports_only_with_masquerade() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["interfaces"][0] = {
        "name": "default",
        "bridge": {},
        "ports": [{"port": 80}],
    }
    assert problems(doc) == [
        f"{DEV}.interfaces[0].ports: ports are only forwarded with the masquerade binding, "
        "not bridge"
    ]


# -- unknown fields and types --------------------------------------------------------------


def test_unknown_fields_refused_with_their_path() -> None:
    doc = kubevirt_vm()
    doc["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["colour"] = "red"
    doc["spec"]["template"]["spec"]["bogus"] = 1
    doc["metadata"]["nmae"] = "typo"
    assert problems(doc) == [
        'metadata.nmae: unknown field "nmae"',
        f'{DEV}.interfaces[0].colour: unknown field "colour"',
        f'{VM}.bogus: unknown field "bogus"',
    ]


def test_ignored_fields_accepted() -> None:
    doc = kubevirt_vm()
    doc["metadata"]["creationTimestamp"] = None
    doc["metadata"]["resourceVersion"] = "12"
    doc["spec"]["runStrategy"] = "Always"
    doc["spec"]["dataVolumeTemplates"] = [{"x": 1}]
    vmi = vmi_of(doc)
    vmi["evictionStrategy"] = "LiveMigrate"
    vmi["nodeSelector"] = {"a": "b"}
    vmi["tolerations"] = []
    vmi["affinity"] = {}
    vmi["domain"]["devices"]["rng"] = {}
    vmi["domain"]["resources"] = {"limits": {"memory": "2Gi"}, "requests": {"cpu": "1"}}
    assert ok(doc).memory_bytes == 512 << 20


def test_unsupported_features_named() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["domain"]["devices"]["interfaces"][0] = {"name": "default", "slirp": {}}
    vmi["volumes"].append({"name": "cfg", "configMap": {"name": "x"}})
    assert problems(doc) == [
        f"{DEV}.interfaces[0].slirp: the slirp binding is not supported",
        f"{VM}.volumes[1].configMap: configMap volumes are not supported",
        f"{VM}.volumes[1]: needs a source: one of containerDisk, cloudInitNoCloud, "
        "persistentVolumeClaim, hostDisk, dataVolume, emptyDisk",
    ]


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("sockets", "two", 'expected an integer, got a string "two"'),
        ("sockets", True, "expected an integer, got a boolean true"),
        ("sockets", 1.5, "expected an integer, got a number 1.5"),
        ("dedicatedCPUPlacement", "yes", 'expected a boolean, got a string "yes"'),
        ("sockets", [1], "expected an integer, got a list"),
        ("sockets", {"n": 1}, "expected an integer, got a mapping"),
    ],
)
def test_wrong_types_name_the_expected_type(where: str, value: object, message: str) -> None:
    doc = virtink()
    doc["spec"]["instance"]["cpu"][where] = value
    assert problems(doc) == [f"{INST}.cpu.{where}: {message}"]


def test_wrong_container_types() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"] = {"name": "pod"}
    doc["spec"]["networks"] = ["pod"]
    assert problems(doc) == [
        f"{INST}.interfaces: expected a list, got a mapping",
        'spec.networks[0]: expected a mapping, got a string "pod"',
    ]


# -- cpu and memory -------------------------------------------------------------------------


def test_memory_quantity_parsed() -> None:
    doc = virtink()
    doc["spec"]["instance"]["memory"]["size"] = "1.5Gi"
    assert ok(doc).memory_bytes == 3 << 29
    doc["spec"]["instance"]["memory"]["size"] = "1e9"
    assert ok(doc).memory_bytes == 10**9


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("-1Gi", '"-1Gi" is negative'),
        ("lots", '"lots" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        ("8Mi", "8388608 bytes is less than the minimum of 16Mi"),
        ("17Ti", "18691697672192 bytes is more than the maximum of 16Ti"),
        (True, "expected a quantity such as 1Gi, got a boolean true"),
    ],
)
def test_bad_memory(size: object, message: str) -> None:
    doc = virtink()
    doc["spec"]["instance"]["memory"]["size"] = size
    assert problems(doc) == [f"{INST}.memory.size: {message}"]


def test_memory_required_kubevirt() -> None:
    doc = kubevirt_vm()
    del vmi_of(doc)["domain"]["memory"]
    assert problems(doc) == [
        f"{VM}.domain.memory.guest: is required (or domain.resources.requests.memory)"
    ]


def test_memory_from_requests_kubevirt() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    del vmi["domain"]["memory"]
    vmi["domain"]["resources"] = {"requests": {"memory": "1024M"}}
    assert ok(doc).memory_bytes == 1024 * 10**6
    vmi["domain"]["resources"] = {"requests": {"memory": "1Mi"}}
    assert problems(doc) == [
        f"{VM}.domain.resources.requests.memory: 1048576 bytes is less than the minimum of 16Mi"
    ]


def test_vcpu_limits() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["cpu"] = {"sockets": 4, "cores": 32, "threads": 2}
    assert problems(doc) == [
        f"{VM}.domain.cpu: 4 sockets x 32 cores x 2 threads = 256 vCPUs, more than the "
        "maximum of 255"
    ]
    vmi_of(doc)["domain"]["cpu"] = {"cores": 0}
    assert problems(doc) == [f"{VM}.domain.cpu.cores: 0 is less than 1"]


# -- disks and volumes -------------------------------------------------------------------------


def test_disk_needs_volume_and_volume_gets_disk() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["domain"]["devices"]["disks"].append({"name": "data"})
    assert problems(doc) == [
        f'{DEV}.disks[1].name: disk "data" has no volume of the same name in {VM}.volumes'
    ]
    doc = kubevirt_vm()
    vmi_of(doc)["volumes"].append({"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config"}})
    spec = ok(doc)
    assert [(d.name, d.bus) for d in spec.disks] == [("root", "virtio"), ("ci", "virtio")]


def test_duplicate_disk_and_volume_names() -> None:
    doc = virtink()
    doc["spec"]["instance"]["disks"].append({"name": "root"})
    doc["spec"]["volumes"].append({"name": "root", "dataVolume": {"volumeName": "dv"}})
    assert problems(doc) == [
        f'{INST}.disks[1].name: disk name "root" is already used by {INST}.disks[0].name',
        'spec.volumes[1].name: volume name "root" is already used by spec.volumes[0].name',
    ]


def test_boot_order_unique_and_positive() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["domain"]["devices"]["disks"][0]["bootOrder"] = 1
    vmi["domain"]["devices"]["interfaces"][0]["bootOrder"] = 1
    assert problems(doc) == [
        f"{DEV}.interfaces[0].bootOrder: boot order 1 is already used by {DEV}.disks[0].bootOrder"
    ]
    vmi["domain"]["devices"]["interfaces"][0]["bootOrder"] = 0
    assert problems(doc) == [f"{DEV}.interfaces[0].bootOrder: 0 is less than 1"]


def test_disk_bus_and_cdrom() -> None:
    doc = kubevirt_vm()
    disks = vmi_of(doc)["domain"]["devices"]["disks"]
    disks[0] = {"name": "root", "cdrom": {}}
    disk = ok(doc).disks[0]
    assert (disk.cdrom, disk.bus, disk.read_only) == (True, "sata", True)
    disks[0] = {"name": "root", "disk": {"bus": "ide"}}
    assert problems(doc) == [
        f'{DEV}.disks[0].disk.bus: "ide" is not one of virtio, sata, scsi, usb'
    ]


def test_cloud_init_base64() -> None:
    doc = virtink()
    doc["spec"]["instance"]["disks"].append({"name": "ci"})
    doc["spec"]["volumes"].append(
        {"name": "ci", "cloudInit": {"userDataBase64": "I2Nsb3VkLWNvbmZpZw=="}}
    )
    vol = ok(doc).volumes[1].source
    assert getattr(vol, "user_data", None) == "#cloud-config"
    doc["spec"]["volumes"][1]["cloudInit"] = {"userDataBase64": "%%%"}
    assert problems(doc) == [
        'spec.volumes[1].cloudInit.userDataBase64: "%%%" is not base64-encoded UTF-8 text'
    ]
    doc["spec"]["volumes"][1]["cloudInit"] = {"userData": "a", "userDataBase64": "YQ=="}
    assert problems(doc) == [
        "spec.volumes[1].cloudInit.userDataBase64: userData and userDataBase64 are both set"
    ]


def test_host_disk_and_empty_disk() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["volumes"] += [
        {"name": "h", "hostDisk": {"path": "/d.img", "type": "DiskOrCreate"}},
        {"name": "e", "emptyDisk": {}},
    ]
    assert problems(doc) == [
        f"{VM}.volumes[1].hostDisk.capacity: is required when type is DiskOrCreate",
        f"{VM}.volumes[2].emptyDisk.capacity: is required",
    ]
    vmi["volumes"][1]["hostDisk"]["capacity"] = "1Gi"
    vmi["volumes"][2]["emptyDisk"]["capacity"] = "2Gi"
    spec = ok(doc)
    assert [getattr(v.source, "capacity_bytes", None) for v in spec.volumes] == [
        None,
        1 << 30,
        2 << 30,
    ]


# -- kubevirt interface details ------------------------------------------------------------------


def test_pci_address_model_and_dhcp_options() -> None:
    doc = kubevirt_vm()
    vmi = vmi_of(doc)
    vmi["domain"]["devices"]["interfaces"][0].update(
        {
            "model": "e1000e",
            "pciAddress": "0000:07:00.0",
            "dhcpOptions": {
                "bootFileName": "pxelinux.0",
                "tftpServerName": "tftp.example",
                "ntpServers": ["10.0.0.1"],
                "privateOptions": [{"option": 240, "value": "x"}],
            },
        }
    )
    iface = ok(doc).interfaces[0]
    assert (iface.model, iface.pci_address) == ("e1000e", "0000:07:00.0")
    assert iface.dhcp_options is not None
    assert iface.dhcp_options.boot_file_name == "pxelinux.0"
    assert iface.dhcp_options.ntp_servers == (ipaddress.IPv4Address("10.0.0.1"),)
    assert iface.dhcp_options.private_options[0].option == 240
    vmi["domain"]["devices"]["interfaces"][0].update(
        {
            "model": "vmxnet3",
            "pciAddress": "07:00.0",
            "dhcpOptions": {
                "ntpServers": ["ntp.example"],
                "privateOptions": [
                    {"option": 100, "value": "x"},
                    {"option": 250, "value": "y"},
                    {"option": 250, "value": "z"},
                ],
            },
        }
    )
    base = f"{DEV}.interfaces[0]"
    assert problems(doc) == [
        f'{base}.model: "vmxnet3" is not one of virtio, e1000, e1000e, igb, ne2k_pci, pcnet, '
        "rtl8139",
        f'{base}.pciAddress: "07:00.0" is not a PCI address (like 0000:07:00.0)',
        f'{base}.dhcpOptions.ntpServers[0]: "ntp.example" is not an IPv4 address',
        f"{base}.dhcpOptions.privateOptions[0].option: 100 is less than 224",
        f"{base}.dhcpOptions.privateOptions[2].option: option 250 is already set by "
        f"{base}.dhcpOptions.privateOptions[1]",
    ]


def test_multus_network_name_format() -> None:
    doc = virtink()
    doc["spec"]["networks"][0] = {"name": "pod", "multus": {"networkName": "a/b/c"}}
    assert problems(doc) == [
        'spec.networks[0].multus.networkName: "a/b/c" is not a NetworkAttachmentDefinition '
        "name (name or namespace/name)"
    ]
    doc["spec"]["networks"][0]["multus"]["networkName"] = "ns1/nad"
    net = ok(doc).networks[0]
    assert net.source == MultusNetwork(network_name="ns1/nad")


def test_hostname_and_grace_period() -> None:
    doc = kubevirt_vmi()
    doc["spec"]["hostname"] = "Bad_Host"
    doc["spec"]["terminationGracePeriodSeconds"] = -1
    assert problems(doc) == [
        "spec.terminationGracePeriodSeconds: -1 is less than 0",
        "spec.hostname: \"Bad_Host\" is not a DNS label (1-63 of a-z, 0-9 and '-')",
    ]


def test_kernel_boot_rules() -> None:
    doc = kubevirt_vmi()
    doc["spec"]["domain"]["firmware"] = {"kernelBoot": {"kernelArgs": "console=ttyS0"}}
    assert problems(doc) == ["spec.domain.firmware.kernelBoot.container: is required"]
    doc["spec"]["domain"]["firmware"]["kernelBoot"]["container"] = {"image": "k"}
    assert problems(doc) == [
        "spec.domain.firmware.kernelBoot.container: needs kernelPath, initrdPath or both"
    ]
    doc["spec"]["domain"]["firmware"]["kernelBoot"]["container"]["initrdPath"] = "/i"
    assert problems(doc) == [
        "spec.domain.firmware.kernelBoot.kernelArgs: needs container.kernelPath to be set"
    ]


def test_metadata_required_and_string_maps() -> None:
    doc = virtink()
    del doc["metadata"]["name"]
    doc["metadata"]["labels"] = {"a": 1}
    assert problems(doc) == [
        "metadata.name: is required",
        "metadata.labels.a: expected a string, got an integer 1",
    ]


def test_every_problem_collected_in_one_error() -> None:
    doc = virtink()
    inst = doc["spec"]["instance"]
    inst["memory"]["size"] = "x"
    inst["interfaces"][0]["mac"] = "nope"
    inst["cpu"]["sockets"] = 0
    doc["spec"]["networks"][0]["extra"] = True
    assert len(problems(doc)) == 4


# -- more one-of and unsupported rules ---------------------------------------------------------


def test_vdpa_not_on_pod_network() -> None:
    doc = virtink()
    doc["spec"]["instance"]["interfaces"][0] = {"name": "pod", "vdpa": {"numQueues": 0}}
    assert problems(doc) == [
        f"{INST}.interfaces[0].vdpa.numQueues: 0 is less than 1",
        f"{INST}.interfaces[0].vdpa: vdpa needs a multus (secondary) network, but "
        '"pod" is the pod network',
    ]
    doc["spec"]["instance"]["interfaces"][0]["vdpa"] = {"numQueues": 4, "iommu": True}
    assert problems(doc) == [
        f"{INST}.interfaces[0].vdpa: vdpa needs a multus (secondary) network, but "
        '"pod" is the pod network'
    ]


def test_second_multus_default() -> None:
    doc = kubevirt_vmi()
    spec = doc["spec"]
    spec["domain"]["devices"]["interfaces"] = [
        {"name": "a", "bridge": {}},
        {"name": "b", "bridge": {}},
    ]
    spec["networks"] = [
        {"name": "a", "multus": {"networkName": "n1", "default": True}},
        {"name": "b", "multus": {"networkName": "n2", "default": True}},
    ]
    assert problems(doc) == [
        'spec.networks[1].multus.default: "b" is a second default network '
        "(spec.networks[0].multus.default is the first)"
    ]


def test_invalid_network_does_not_cascade() -> None:
    doc = virtink()
    doc["spec"]["networks"][0] = {"name": "pod", "multus": {"networkName": "Bad_Name"}}
    assert problems(doc) == [
        'spec.networks[0].multus.networkName: "Bad_Name" is not a NetworkAttachmentDefinition '
        "name (name or namespace/name)"
    ]


def test_disk_types_one_of_and_unsupported() -> None:
    doc = kubevirt_vm()
    disks = vmi_of(doc)["domain"]["devices"]["disks"]
    disks[0] = {"name": "root", "disk": {}, "cdrom": {}}
    assert problems(doc) == [
        f"{DEV}.disks[0]: has 2 disk types (disk, cdrom); exactly one is allowed"
    ]
    disks[0] = {"name": "root", "lun": {}}
    assert problems(doc) == [f"{DEV}.disks[0].lun: lun disks are not supported"]


def test_instancetype_and_cloud_init_secrets_refused() -> None:
    doc = kubevirt_vm()
    doc["spec"]["instancetype"] = {"name": "u1.small"}
    vmi_of(doc)["volumes"].append({"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "s"}}})
    assert problems(doc) == [
        "spec.instancetype: instancetype is not supported: give the launcher the expanded "
        "instance spec",
        f"{VM}.volumes[1].cloudInitNoCloud.secretRef: secrets are not supported: inline the "
        "data or mount it",
    ]


def test_host_disk_type() -> None:
    doc = kubevirt_vm()
    vmi_of(doc)["volumes"].append({"name": "h", "hostDisk": {"path": "/x", "type": "File"}})
    assert problems(doc) == [
        f'{VM}.volumes[1].hostDisk.type: "File" is not one of Disk, DiskOrCreate'
    ]


def test_metadata_defaults_and_vmi_labels() -> None:
    spec = ok(kubevirt_vmi())
    assert (spec.namespace, spec.name, spec.labels) == ("default", "vmi3", ())
    doc = kubevirt_vmi()
    doc["metadata"].update({"namespace": "prod", "uid": "u-1", "labels": {"k": "v"}})
    spec = ok(doc)
    assert (spec.namespace, spec.uid, spec.labels) == ("prod", "u-1", (("k", "v"),))
    vm = ok(kubevirt_vm())
    assert vm.labels == (("app", "x"),)  # from spec.template.metadata, not metadata


def test_virtink_cpu_and_kernel() -> None:
    doc = virtink()
    doc["spec"]["instance"]["cpu"] = {
        "sockets": 2,
        "coresPerSocket": 3,
        "dedicatedCPUPlacement": True,
    }
    doc["spec"]["instance"]["kernel"] = {"image": "k", "cmdline": "console=ttyS0"}
    spec = ok(doc)
    assert (spec.cpu.sockets, spec.cpu.cores, spec.cpu.threads, spec.cpu.dedicated) == (
        2,
        3,
        1,
        True,
    )
    assert spec.kernel is not None
    assert (spec.kernel.image, spec.kernel.cmdline) == ("k", "console=ttyS0")
    doc["spec"]["instance"]["kernel"] = {"cmdline": "x"}
    assert problems(doc) == [f"{INST}.kernel.image: is required"]


def test_empty_string_refused() -> None:
    doc = virtink()
    doc["spec"]["volumes"][0]["containerDisk"]["image"] = "  "
    assert problems(doc) == ["spec.volumes[0].containerDisk.image: must not be empty"]
