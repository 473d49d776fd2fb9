"""E2E (slow tier): a real Debian cloud guest as a KubeVirt containerDisk with cloud-init.

The guest is testbed/guest/debian.py's disk (docs/guest.md): bookworm, systemd,
cloud-init 22.4 with netplan on systemd-networkd, GRUB in the MBR, Debian's cloud kernel
(no AHCI). ``virt-launcher run`` boots it under QEMU/TCG **through SeaBIOS** in a
simulated pod, in a private mount namespace where the containerDisk image is a
**read-only bind mount** of the cached disk, as a pod's image volume is. Three boots in
all (each tens of seconds of TCG), every check folded into them:

``test_bridge_dual_stack_cloud_init_restart`` — dual-stack pod (MTU 1400, resolv.conf
with two name servers and a search list), a plain-L2 Multus network without IPAM whose
network-status gives the guest 10.95.0.7/24, a PVC disk, the cidata ISO on a ``cdrom``
with bus ``sata``:

* boot 1: GRUB's marker (firmware boot); cloud-init finishes with the NoCloud seed from
  /dev/sr0 (the sata cdrom, attached on virtio-scsi), ``status: done``, no errors in
  result.json; the hostname from our meta-data, the user from the user-data, runcmd ran;
  the guest's own stack (networkd) holds the pod IPv4 from DHCP and the pod IPv6 from
  DHCPv6, default routes via the pod's gateways (IPv6: the router advertisement), MTU
  1400, the pod's name servers and search list; the static address on the L2 NIC from
  the launcher's network-config; the peer fetches the page at both pod addresses and
  the L2 peer at 10.95.0.7; SIGTERM → ACPI power button → systemd powers off → exit 0
  well within the grace period;
* boot 2, a launcher restart in the same pod (same state dir): the file the guest wrote
  on its root disk in boot 1 is still there (the overlay is kept, docs/volumes.md), and
  so is what it wrote on the PVC; the image file's checksum never changed.

``test_masquerade_port`` — masquerade binding, ``ports: [80]``: the peer reaches the
guest's page through the pod IP.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from launcher.network.multus import kubevirt_hashed_name
from testbed.guest.console import ConsoleReader
from testbed.guest.debian import DebianImage
from testbed.harness import sh, simulated_pod, veth

REPO = Path(__file__).resolve().parents[2]
SUFFIX = os.getpid() % 100000
POD, PEER, L2 = f"dg-pod-{SUFFIX}", f"dg-peer-{SUFFIX}", f"dg-l2-{SUFFIX}"
PEER_IF = "dgq0"
POD4, PEER4 = "10.94.0.5", "10.94.0.1"
POD6, PEER6 = "fd94::5", "fd94::1"
L2_IF, L2_MAC, L2_ADDR = kubevirt_hashed_name("l2"), "02:00:00:00:94:07", "10.95.0.7"
MTU = 1400
NAMESERVERS = ("10.94.0.53", "fd94::53")
SEARCH = ("e2e.svc.cluster.local", "svc.cluster.local", "cluster.local")
PVC_BYTES = 64 << 20
GRACE_S = 120
BOOT_TIMEOUT_S = 420.0  # launcher start → report; about 60-90 s when the machine is quiet
HTTP_ATTEMPTS = 30
EXIT_TIMEOUT_S = 30.0

pytestmark = pytest.mark.timeout(1500)

# What the test asks cloud-init for: a user, a service for the page, a report on the
# console after cloud-init is done (every boot), a mark on the root disk and on the PVC.
REPORT = r"""#!/bin/sh
# The guest's view for the e2e test, on the serial console, after cloud-init (every boot).
exec > /dev/ttyS0 2>&1
i=0
while [ "$i" -lt 120 ]; do
  if ip -6 route show default | grep -q . && ip -6 -o addr show scope global | grep -q .; then
    break
  fi
  sleep 1
  i=$((i + 1))
done
echo "VLD-REPORT-BEGIN boot=$(cat /proc/sys/kernel/random/boot_id) waited=$i"
echo "VLD-HOSTNAME $(hostname)"
echo "VLD-USER $(getent passwd vltest)"
echo "VLD-MARK $(cat /var/lib/vld/mark 2>/dev/null)"
for b in /sys/block/vd*; do
  if [ "$(cat "$b/size")" = 131072 ]; then echo "VLD-PVC $(head -n 1 "/dev/${b##*/}")"; fi
done
ip -o addr show | sed 's/^/VLD| addr /'
ip -o link show | sed 's/^/VLD| link /'
ip -4 route show default | sed 's/^/VLD| route4 /'
ip -6 route show default | sed 's/^/VLD| route6 /'
sed 's/^/VLD| resolv /' /etc/resolv.conf
cloud-init status --long | sed 's/^/VLD| status /'
echo "VLD-RESULT $(tr -d '\n' < /var/lib/cloud/data/result.json)"
echo "VLD-REPORT-END"
"""

USER_DATA = {
    "users": [
        {"name": "vltest", "gecos": "virt-launcher e2e", "shell": "/bin/bash", "lock_passwd": True}
    ],
    "write_files": [
        {"path": "/usr/local/bin/vld-report", "permissions": "0755", "content": REPORT},
        {"path": "/srv/vld/index.html", "content": "VLD-HTTP-OK debian guest\n"},
        {
            "path": "/etc/systemd/system/vld-web.service",
            "content": "[Unit]\nDescription=e2e page\n[Service]\n"
            "ExecStart=/usr/bin/python3 -m http.server 80 --bind :: --directory /srv/vld\n"
            "[Install]\nWantedBy=multi-user.target\n",
        },
        {
            # not wanted by a target: cloud-final.service is ordered after
            # multi-user.target, so WantedBy= there would make an ordering cycle; not a
            # oneshot: a start job still waiting for IPv6 would hold up the power-off
            "path": "/etc/systemd/system/vld-report.service",
            "content": "[Unit]\nDescription=e2e report\nAfter=cloud-final.service\n"
            "[Service]\nType=exec\nExecStart=/usr/local/bin/vld-report\n",
        },
        {
            # cloud-final runs per-boot scripts at every boot: queue the report after it
            "path": "/var/lib/cloud/scripts/per-boot/vld-report",
            "permissions": "0755",
            "content": "#!/bin/sh\nexec systemctl start --no-block vld-report.service\n",
        },
    ],
    "runcmd": [
        "mkdir -p /var/lib/vld && cat /proc/sys/kernel/random/boot_id > /var/lib/vld/mark",
        'for b in /sys/block/vd*; do if [ "$(cat "$b/size")" = 131072 ]; then '
        'printf "VLD-PVC-DATA %s\\n" "$(cat /var/lib/vld/mark)" '
        '| dd of="/dev/${b##*/}" conv=fsync status=none; fi; done',
        "sync",
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "vld-web.service"],
        'echo "VLD-RUNCMD user=$(id -u vltest) hostname=$(hostname)" > /dev/ttyS0',
    ],
}
USER_DATA_TEXT = "#cloud-config\n" + yaml.safe_dump(USER_DATA, sort_keys=False, width=1000)


def spec_yaml(binding: str) -> str:
    """The VMI: containerDisk + cloudInitNoCloud (cdrom, bus sata), PVC, firmware boot."""
    bridge = binding == "bridge"
    iface = "bridge: {}" if bridge else "masquerade: {}\n          ports:\n            - port: 80"
    l2_iface = "\n        - name: l2\n          bridge: {}" if bridge else ""
    l2_net = "\n    - name: l2\n      multus:\n        networkName: l2-net" if bridge else ""
    return f"""\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: dg-vm
  namespace: e2e
  uid: 0d6c3b7e-94a1-4c2e-8f55-2b9e1f7a3c60
spec:
  hostname: dg-guest
  terminationGracePeriodSeconds: {GRACE_S}
  domain:
    cpu:
      cores: 1
    memory:
      guest: 512Mi
    devices:
      disks:
        - name: rootdisk
          bootOrder: 1
          disk:
            bus: virtio
        - name: data
          disk:
            bus: virtio
        - name: cloudinitdisk
          cdrom:
            bus: sata
      interfaces:
        - name: pod
          {iface}{l2_iface}
  networks:
    - name: pod
      pod: {{}}{l2_net}
  volumes:
    - name: rootdisk
      containerDisk:
        image: localhost/vl-debian-guest:bookworm
    - name: data
      persistentVolumeClaim:
        claimName: dg-data
    - name: cloudinitdisk
      cloudInitNoCloud:
        userData: {json.dumps(USER_DATA_TEXT)}
"""


NETWORK_STATUS = [
    {"name": "kindnet", "interface": "eth0", "ips": [POD4, POD6], "default": True, "dns": {}},
    {"name": "e2e/l2-net", "interface": L2_IF, "ips": [f"{L2_ADDR}/24"], "mac": L2_MAC},
]


@pytest.fixture
def pod() -> Iterator[None]:
    """Dual-stack pod (MTU 1400, its own resolv.conf) plus a plain-L2 secondary network."""
    netns_etc = Path("/etc/netns") / POD
    with simulated_pod(POD, PEER, PEER_IF, (POD4, PEER4), (POD6, PEER6), others=(L2,)):
        sh("ip", "-n", POD, "link", "set", "eth0", "mtu", str(MTU))
        sh("ip", "-n", PEER, "link", "set", PEER_IF, "mtu", str(MTU))
        veth(POD, L2_IF, L2, "dgl2", L2_MAC)
        sh("ip", "-n", POD, "-6", "addr", "flush", "dev", L2_IF)  # no IPAM at all
        sh("ip", "-n", L2, "addr", "add", "10.95.0.1/24", "dev", "dgl2")
        netns_etc.mkdir(parents=True, exist_ok=True)
        (netns_etc / "resolv.conf").write_text(
            "".join(f"nameserver {ns}\n" for ns in NAMESERVERS) + f"search {' '.join(SEARCH)}\n"
        )
        try:
            yield
        finally:
            (netns_etc / "resolv.conf").unlink(missing_ok=True)
            netns_etc.rmdir()


@dataclass
class Launcher:
    """One ``virt-launcher run`` in the pod netns and its own mount namespace."""

    proc: subprocess.Popen[bytes]
    console: ConsoleReader
    stderr_path: Path
    started: float

    def wait_text(self, needle: str, timeout: float, since: int = 0) -> tuple[int, str]:
        """The first console line at or after ``since`` containing ``needle`` (bounded)."""
        deadline = time.monotonic() + timeout
        index = since
        while True:
            lines = self.console.text().splitlines()
            for i in range(index, len(lines)):
                if needle in lines[i]:
                    return i, lines[i]
            index = len(lines)
            if time.monotonic() > deadline or self.console.closed:
                tail = "\n".join(lines[-40:])
                err = self.stderr_path.read_text()[-2000:]
                raise AssertionError(f"no {needle!r} on the console:\n{tail}\n--- stderr:\n{err}")
            time.sleep(0.5)

    def report(self, since: int = 0) -> Report:
        begin, _ = self.wait_text("VLD-REPORT-BEGIN", BOOT_TIMEOUT_S, since)
        end, _ = self.wait_text("VLD-REPORT-END", 60, begin)
        return Report.parse(self.console.text().splitlines()[begin : end + 1])

    def stop(self) -> tuple[int, float]:
        """SIGTERM (the pod is deleted): exit code and seconds until the launcher exited."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(GRACE_S + EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the launcher outlived its grace period") from None
        self.console.wait_closed(5)
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Report:
    """What vld-report printed: single-value lines and the ``VLD| <kind> …`` lines."""

    values: dict[str, str]
    rows: dict[str, list[str]]

    @classmethod
    def parse(cls, lines: Sequence[str]) -> Report:
        values: dict[str, str] = {}
        rows: dict[str, list[str]] = {}
        for raw in lines:
            at = raw.find("VLD")
            if at < 0:
                continue
            line = raw[at:]
            if line.startswith("VLD| "):
                kind, _, rest = line[5:].partition(" ")
                rows.setdefault(kind, []).append(rest)
            else:
                key, _, rest = line.partition(" ")
                values[key] = rest
        return cls(values, rows)

    def addresses(self, mac: str) -> tuple[str, list[str], int]:
        """(interface name, its addresses, MTU) of the NIC with ``mac``."""
        link = next(r for r in self.rows["link"] if f"link/ether {mac}" in r)
        name = link.split(":")[1].strip()
        mtu = int(re.search(r" mtu (\d+) ", link).group(1))  # type: ignore[union-attr]
        addrs = [r.split()[3] for r in self.rows["addr"] if r.split()[1] == name]
        return name, addrs, mtu


def start(
    tmp: Path, disk: DebianImage, binding: str, run: int, *, podinfo: Path | None = None
) -> Launcher:
    """``virt-launcher run`` in a private mount namespace where the image is read-only."""
    volumes = tmp / "volumes"
    image = volumes / "rootdisk" / "disk.img"
    if not image.exists():
        image.parent.mkdir(parents=True)
        image.touch()  # the bind mount's target
        pvc = volumes / "data" / "disk.img"
        pvc.parent.mkdir(parents=True)
        with pvc.open("wb") as f:
            f.truncate(PVC_BYTES)
    (tmp / "vm.yaml").write_text(spec_yaml(binding))
    mount_ro = 'set -e; mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"; shift 2; exec "$@"'
    argv = [
        "unshare", "-m", "--propagation", "private", "sh", "-c", mount_ro, "sh",
        str(disk.disk), str(image),
        "ip", "netns", "exec", POD, sys.executable, "-m", "launcher", "run",
        "--spec", str(tmp / "vm.yaml"),
        "--state-dir", str(tmp / "state"),
        "--volumes-dir", str(volumes),
        "--termination-log", str(tmp / "termination-log"),
        "--accel", "tcg", "--vmm-user", "keep",
        "--status-listen", f"127.0.0.1:{19000 + SUFFIX % 1000}",
        *(["--podinfo", str(podinfo)] if podinfo else []),
    ]  # fmt: skip
    stderr_path = tmp / f"launcher-{run}.err"
    started = time.monotonic()
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
    assert proc.stdout is not None
    console = ConsoleReader(proc.stdout, log_path=str(tmp / f"console-{run}.log"))
    return Launcher(proc, console, stderr_path, started)


def podinfo_dir(tmp: Path) -> Path:
    podinfo = tmp / "podinfo"
    podinfo.mkdir(exist_ok=True)
    status = json.dumps(NETWORK_STATUS, indent=4)
    annotation = f"k8s.v1.cni.cncf.io/network-status={json.dumps(status)}\n"
    (podinfo / "annotations").write_text(annotation)
    return podinfo


def http(netns: str, url: str) -> str:
    """GET from the netns, retried (bounded) while the guest's service comes up."""
    last = ""
    for _ in range(HTTP_ATTEMPTS):
        done = sh("ip", "netns", "exec", netns, "curl", "-sS", "-g", "--max-time", "3", url,
                  check=False, timeout=15)  # fmt: skip
        if done.returncode == 0:
            return done.stdout
        last = done.stderr.strip()
        time.sleep(1)
    raise AssertionError(f"GET {url} from {netns} failed {HTTP_ATTEMPTS} times: {last}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_bridge_dual_stack_cloud_init_restart(
    pod: None, debian_guest: DebianImage, tmp_path: Path
) -> None:
    del pod
    image_sum = sha256(debian_guest.disk)
    podinfo = podinfo_dir(tmp_path)
    # bridge binding: the guest takes the pod interface's MAC (the pod's gets a new one)
    guest_mac = json.loads(sh("ip", "-n", POD, "-j", "link", "show", "eth0").stdout)[0]["address"]
    first = start(tmp_path, debian_guest, "bridge", 0, podinfo=podinfo)
    try:
        first.wait_text("VLD-GRUB", 120)  # SeaBIOS ran GRUB from the disk's MBR
        _, runcmd = first.wait_text("VLD-RUNCMD", BOOT_TIMEOUT_S)
        assert "hostname=dg-guest" in runcmd and re.search(r"user=\d+", runcmd), runcmd
        report = first.report()
        seconds_to_report = round(time.monotonic() - first.started, 1)
        _, final = first.wait_text(" finished at ", 30)  # cloud-init's final message
        assert "DataSourceNoCloud [seed=/dev/sr0]" in final, final

        # cloud-init: done, no errors, our seed from the sata cdrom (virtio-scsi here)
        result = json.loads(report.values["VLD-RESULT"])["v1"]
        assert result["errors"] == [], result
        assert "DataSourceNoCloud" in result["datasource"], result
        assert "/dev/sr0" in result["datasource"], result
        assert "status: done" in report.rows["status"], report.rows["status"]
        assert report.values["VLD-HOSTNAME"] == "dg-guest"
        assert report.values["VLD-USER"].startswith("vltest:x:"), report.values
        assert "/home/vltest:/bin/bash" in report.values["VLD-USER"]

        # the pod NIC: the pod's own addresses, routes, MTU and DNS in the guest's stack
        name, addrs, mtu = report.addresses(guest_mac)
        assert f"{POD4}/24" in addrs, report.rows["addr"]
        assert f"{POD6}/128" in addrs or f"{POD6}/64" in addrs, report.rows["addr"]
        assert mtu == MTU, report.rows["link"]
        assert any(r.startswith(f"default via {PEER4} dev {name}") for r in report.rows["route4"])
        assert any(r.startswith("default via fe80::") for r in report.rows["route6"]), report.rows
        resolv = report.rows["resolv"]
        for ns in NAMESERVERS:
            assert f"nameserver {ns}" in resolv, resolv
        search = next(r for r in resolv if r.startswith("search "))
        assert search.split()[1:4] == list(SEARCH), resolv
        # the plain-L2 NIC: the static address from the launcher's network-config
        _, l2_addrs, _ = report.addresses(L2_MAC)
        assert f"{L2_ADDR}/24" in l2_addrs, report.rows["addr"]

        assert "VLD-HTTP-OK" in http(PEER, f"http://{POD4}/")
        assert "VLD-HTTP-OK" in http(PEER, f"http://[{POD6}]/")
        assert "VLD-HTTP-OK" in http(L2, f"http://{L2_ADDR}/")
        mark = report.values["VLD-MARK"]
        assert mark == report.values["VLD-REPORT-BEGIN"].split()[0].removeprefix("boot=")

        code, seconds = first.stop()  # SIGTERM: power button, systemd powers off
        assert code == 0, first.stderr_path.read_text()[-3000:]
        assert seconds < GRACE_S, seconds
        text = first.console.text()
        assert "reboot: Power down" in text, text[-2000:]
        print(f"\nboot 1: report after {seconds_to_report} s; SIGTERM → exit 0 in {seconds:.1f} s")
    finally:
        first.kill()

    pvc = tmp_path / "volumes" / "data" / "disk.img"
    assert pvc.read_bytes()[:100].split(b"\n")[0] == f"VLD-PVC-DATA {mark}".encode()

    second = start(tmp_path, debian_guest, "bridge", 1, podinfo=podinfo)  # a restart
    try:
        again = second.report()
        boot = again.values["VLD-REPORT-BEGIN"].split()[0].removeprefix("boot=")
        assert boot != mark  # a new boot …
        assert again.values["VLD-MARK"] == mark  # … of the same root disk: the overlay kept
        assert again.values["VLD-PVC"] == f"VLD-PVC-DATA {mark}"
        result = json.loads(again.values["VLD-RESULT"])["v1"]
        assert result["errors"] == [], result
        assert "VLD-HTTP-OK" in http(PEER, f"http://{POD4}/")
        code, seconds = second.stop()
        assert code == 0, second.stderr_path.read_text()[-3000:]
        print(f"boot 2 (restart): SIGTERM → exit 0 in {seconds:.1f} s")
    finally:
        second.kill()
    assert sha256(debian_guest.disk) == image_sum  # the containerDisk was never written
    overlay = tmp_path / "state" / "overlay" / "rootdisk.qcow2"
    assert overlay.stat().st_size > 1 << 20  # the guest's writes went here


@pytest.fixture
def masquerade_pod() -> Iterator[None]:
    with simulated_pod(POD, PEER, PEER_IF, (POD4, PEER4)):
        yield


def test_masquerade_port(masquerade_pod: None, debian_guest: DebianImage, tmp_path: Path) -> None:
    del masquerade_pod
    launcher = start(tmp_path, debian_guest, "masquerade", 0)
    try:
        launcher.wait_text("VLD-RUNCMD", BOOT_TIMEOUT_S)
        assert "VLD-HTTP-OK" in http(PEER, f"http://{POD4}:80/")
        code, _ = launcher.stop()
        assert code == 0, launcher.stderr_path.read_text()[-3000:]
    finally:
        launcher.kill()
