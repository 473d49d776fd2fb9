"""The transaction's pure parts: state records (atomic, defensive), restore planning,
the pod-level sysctl check's one-line messages."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.errors import NetworkError, StateCacheError
from launcher.network import state, sysctl
from launcher.network.discover import link_to_json
from launcher.network.netlink import Address, Link, Route
from launcher.network.state import (
    PHASE_CONFIGURED,
    PHASE_CONFIGURING,
    TXN_FILE,
    InterfaceRecord,
    LinkSnapshot,
    Transaction,
)
from launcher.network.sysctl import Sysctl
from launcher.network.transaction import (
    Step,
    address_steps,
    created,
    link_steps,
    route_steps,
    snapshot_from_original,
)

from .helpers import pod_link

A = ipaddress.ip_interface
PRIMARY = Address(A("10.77.1.5/24"), flags=0x80, label="eth0")
OTHER_SUBNET = Address(A("10.88.0.5/24"), flags=0x80, broadcast=ipaddress.ip_address("10.88.0.255"))
SECONDARY = Address(A("10.77.1.6/24"), flags=0x81, label="eth0")
V6_OLD = Address(A("fd77::5/64"), flags=0x82)
V6_NEW = Address(A("fd77::6/64"), flags=0x80)
LL = Address(A("fe80::1/64"), flags=0x80, scope=253)
GW = Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.77.1.1"), "eth0", proto=3)
ONLINK = Route(ipaddress.ip_network("169.254.1.1/32"), None, "eth0", scope=253)


def snapshot(**kw: object) -> LinkSnapshot:
    values: dict[str, object] = {
        "name": "eth0",
        "mac": "0a:58:0a:4d:01:05",
        "mtu": 1450,
        "up": True,
        "master": None,
        "addresses": (PRIMARY, OTHER_SUBNET, SECONDARY, V6_NEW, V6_OLD),
        "routes": (GW,),
        "ipv4": (("arp_ignore", 0),),
    }
    values.update(kw)
    return LinkSnapshot(**values)  # type: ignore[arg-type]


def live(**kw: object) -> Link:
    values: dict[str, object] = {
        "name": "eth0",
        "index": 2,
        "mac": "0a:58:0a:4d:01:05",
        "mtu": 1450,
        "kind": "veth",
        "master": None,
        "up": True,
        "addresses": (),
        "ipv4_conf": (("arp_ignore", 0),),
    }
    values.update(kw)
    return Link(**values)  # type: ignore[arg-type]


def record(phase: str = PHASE_CONFIGURED) -> InterfaceRecord:
    return InterfaceRecord(
        pod_interface="eth0",
        binding="bridge",
        phase=phase,
        original=link_to_json(pod_link()),
        snapshot=snapshot(),
        owned=("vltap0", "vlbr0"),
    )


# ---- records ------------------------------------------------------------------------


def test_interface_record_roundtrip(tmp_path: Path) -> None:
    state.write_record(tmp_path, record())
    assert state.read_record(tmp_path, "eth0") == record()
    assert state.list_records(tmp_path) == ("eth0",)
    state.remove_record(tmp_path, "eth0")
    assert state.read_record(tmp_path, "eth0") is None


def test_transaction_roundtrip_and_it_is_never_taken_for_an_interface(tmp_path: Path) -> None:
    txn = Transaction(
        nics=(record(PHASE_CONFIGURING),),
        sysctls=(("net.ipv6.conf.all.forwarding", "1", "0"),),
        nft_before="table inet virt_launcher {\n}\n",
    )
    state.write_txn(tmp_path, txn)
    assert state.read_txn(tmp_path) == txn
    assert state.list_records(tmp_path) == ()
    state.remove_txn(tmp_path)
    assert state.read_txn(tmp_path) is None and not (tmp_path / TXN_FILE).exists()


def test_a_reapply_entry_keeps_what_existed_its_running_links_and_previous_record(
    tmp_path: Path,
) -> None:
    running = (snapshot(master="vlbr0", addresses=()), snapshot(name="vlbr0", routes=()))
    entry = replace(
        record(PHASE_CONFIGURING), existed=("vltap0", "vlbr0"), running=running, previous=record()
    )
    assert entry.reapply and not record().reapply
    state.write_txn(tmp_path, Transaction(nics=(entry,), nft_before=""))
    txn = state.read_txn(tmp_path)
    assert txn is not None and txn.nics == (entry,)
    # the interface record itself never carries them (its file format is unchanged)
    state.write_record(tmp_path, replace(entry, phase=PHASE_CONFIGURED))
    with pytest.raises(StateCacheError, match="transaction fields in an interface record"):
        state.read_record(tmp_path, "eth0")


def test_a_rollback_deletes_only_the_links_its_transaction_made() -> None:
    first = record(PHASE_CONFIGURING)
    assert created(first) == ("vltap0", "vlbr0")  # a first apply: it made both
    assert created(replace(first, existed=("vltap0",))) == ("vlbr0",)
    # a re-apply of a running NIC: both existed, its rollback deletes nothing
    assert created(replace(first, existed=("vltap0", "vlbr0"), previous=record())) == ()


def test_version_1_records_are_still_read(tmp_path: Path) -> None:
    v1 = {
        "version": 1,
        "pod_interface": "eth0",
        "binding": "bridge",
        "phase": "configuring",
        "original": link_to_json(pod_link()),
    }
    (tmp_path / "net-eth0.json").write_text(json.dumps(v1))
    got = state.read_record(tmp_path, "eth0")
    assert got is not None and got.phase == PHASE_CONFIGURING and got.snapshot is None
    snap = snapshot_from_original(got.original)
    assert [str(a.address) for a in snap.addresses] == ["10.244.1.5/24", "fd00:10:244:1::5/64"]
    assert snap.up and snap.mac == pod_link().mac


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00garbage", "not UTF-8 text at byte 0"),
        (b"{nope", "not JSON"),
        (b"[1, 2]", "expected an object, found list"),
        (json.dumps({"version": 9}).encode(), "version 9"),
        (
            json.dumps({**json.loads(json.dumps({"version": 2})), "phase": "weird"}).encode(),
            "phase 'weird'",
        ),
    ],
)
def test_bytes_we_did_not_write_name_the_file_and_what_to_do(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "net-eth0.json"
    path.write_bytes(content)
    with pytest.raises(StateCacheError) as caught:
        state.read_record(tmp_path, "eth0")
    message = str(caught.value)
    assert str(path) in message and why in message
    assert "delete the file" in message and "recreate the pod" in message
    assert "\n" not in message


def test_a_bad_snapshot_field_is_named(tmp_path: Path) -> None:
    data = json.loads(json.dumps(state._record_to_json(record())))
    data["snapshot"]["mtu"] = "big"
    (tmp_path / "net-eth0.json").write_text(json.dumps(data))
    with pytest.raises(StateCacheError, match="'mtu' is 'big', not int"):
        state.read_record(tmp_path, "eth0")


def test_a_bad_transaction_record_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / TXN_FILE).write_bytes(b"\x00\x01")
    with pytest.raises(StateCacheError, match="unfinished network set-up"):
        state.read_txn(tmp_path)


def test_enospc_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StateCacheError, match="No space left on device"):
        state.write_record(tmp_path, record())
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_old_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state.write_record(tmp_path, record())
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(StateCacheError):
        state.write_record(tmp_path, InterfaceRecord("eth0", "masquerade", PHASE_CONFIGURED, {}))
    monkeypatch.undo()
    assert state.read_record(tmp_path, "eth0") == record()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net-eth0.json"]


# ---- restore planning ---------------------------------------------------------------


def test_nothing_to_do_when_the_link_matches() -> None:
    have = (PRIMARY, OTHER_SUBNET, SECONDARY, V6_NEW, V6_OLD, LL)
    assert link_steps(snapshot(), live()) == []
    assert address_steps(snapshot().addresses, have) == []


def test_secondaries_go_first_and_come_back_after_their_primary() -> None:
    # the pod interface lost its primary (and with it the secondary): put all back
    have = (OTHER_SUBNET, V6_NEW, V6_OLD)
    steps = address_steps(snapshot().addresses, have)
    assert steps == [
        Step("del_address", OTHER_SUBNET.address),
        Step("add_address", PRIMARY),
        Step("add_address", OTHER_SUBNET),
        Step("add_address", SECONDARY),
    ]
    # deletion order: reverse kernel order, so no secondary is taken along by its primary
    steps = address_steps((), (PRIMARY, OTHER_SUBNET, SECONDARY))
    assert [s.arg for s in steps] == [SECONDARY.address, OTHER_SUBNET.address, PRIMARY.address]


def test_ipv6_comes_back_oldest_first_so_the_kernel_lists_it_as_before() -> None:
    steps = address_steps(snapshot().addresses, (PRIMARY, OTHER_SUBNET, SECONDARY, LL))
    assert steps == [Step("add_address", V6_OLD), Step("add_address", V6_NEW)]


def test_a_changed_attribute_counts_as_different() -> None:
    plain = Address(OTHER_SUBNET.address, flags=0x80)  # the broadcast is gone
    steps = address_steps((OTHER_SUBNET,), (plain,))
    assert steps == [Step("del_address", plain.address), Step("add_address", OTHER_SUBNET)]
    # kernel state flags (tentative, secondary, permanent) do not count
    assert address_steps((V6_OLD,), (Address(V6_OLD.address, flags=0x02 | 0x40),)) == []


def test_link_steps_release_mac_state_and_knobs() -> None:
    bridged = live(mac="02:00:00:00:00:01", master="vlbr0", ipv4_conf=(("arp_ignore", 1),))
    assert link_steps(snapshot(), bridged) == [
        Step("release"),
        Step("down"),
        Step("mac", "0a:58:0a:4d:01:05"),
        Step("up"),
        Step("ipv4", (("arp_ignore", 0),)),
    ]
    # an interface that was DOWN is left down
    assert link_steps(snapshot(up=False), live()) == [Step("down")]
    assert link_steps(snapshot(up=False), live(mac="02:00:00:00:00:01")) == [
        Step("down"),
        Step("mac", "0a:58:0a:4d:01:05"),
    ]


def test_a_running_nics_port_is_put_back_into_its_bridge() -> None:
    port = snapshot(master="vlbr0", mac="02:00:00:00:00:01")
    assert link_steps(port, live(mac="02:00:00:00:00:01")) == [Step("master", "vlbr0")]
    assert link_steps(port, live(mac="02:00:00:00:00:01", master="vlbr9")) == [
        Step("release"),
        Step("master", "vlbr0"),
    ]
    assert link_steps(port, live(mac="02:00:00:00:00:01", master="vlbr0")) == []


def test_routes_on_link_first() -> None:
    via = Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("169.254.1.1"), "eth0")
    steps = route_steps((via, ONLINK, GW), (GW,))
    assert steps == [Step("add_route", ONLINK), Step("add_route", via)]


# ---- the pod-level sysctl check -----------------------------------------------------


@pytest.fixture
def proc_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc-sys"
    for key, value in (
        ("net/ipv6/conf/all/forwarding", "0"),
        ("net/ipv6/conf/eth0/accept_ra", "1"),
    ):
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_text(value + "\n")
    monkeypatch.setattr(sysctl, "PROC_SYS", root)
    return root


def test_a_right_value_needs_nothing(proc_sys: Path) -> None:
    assert sysctl.pending_sysctls([Sysctl("net.ipv6.conf.eth0.accept_ra", "1")]) == ()


def test_read_only_proc_sys_is_one_line_naming_the_sysctl_and_the_pod_field(
    proc_sys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sysctl, "_read_only", lambda path: True)
    with pytest.raises(NetworkError) as one:
        sysctl.pending_sysctls([Sysctl("net.ipv6.conf.all.forwarding", "1")])
    assert str(one.value) == (
        "pod-level sysctl net.ipv6.conf.all.forwarding must be 1 (it is 0) and /proc/sys is "
        "read-only in this container: set it in the Pod's spec.securityContext.sysctls"
    )
    with pytest.raises(NetworkError) as two:
        sysctl.pending_sysctls(
            [
                Sysctl("net.ipv6.conf.all.forwarding", "1"),
                Sysctl("net.ipv6.conf.eth0.accept_ra", "2"),
            ]
        )
    assert "net.ipv6.conf.all.forwarding=1 (it is 0), net.ipv6.conf.eth0.accept_ra=2 (it is 1)" in (
        str(two.value)
    )
    assert "set them in the Pod's spec.securityContext.sysctls" in str(two.value)


def test_writable_proc_sys_is_written_and_a_refused_write_undoes_the_others(
    proc_sys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted = [
        Sysctl("net.ipv6.conf.all.forwarding", "1"),
        Sysctl("net.ipv6.conf.eth0.accept_ra", "2"),
    ]
    pending = sysctl.pending_sysctls(wanted)
    assert [(s.key, old) for s, old in pending] == [
        ("net.ipv6.conf.all.forwarding", "0"),
        ("net.ipv6.conf.eth0.accept_ra", "1"),
    ]
    (proc_sys / "net/ipv6/conf/eth0/accept_ra").chmod(0o444)
    if os.geteuid() == 0:  # root ignores file modes: refuse the second write another way
        real = Path.write_text

        def refuse(self: Path, text: str, *a: object, **k: object) -> int:
            if self.name == "accept_ra" and text.strip() == "2":
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(self, text, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(NetworkError, match="may not write it"):
        sysctl.write_sysctls(pending)
    assert (proc_sys / "net/ipv6/conf/all/forwarding").read_text().strip() == "0"


def test_only_namespaced_net_sysctls() -> None:
    with pytest.raises(NetworkError, match="not a namespaced net"):
        sysctl.pending_sysctls([Sysctl("kernel.shmmax", "1")])
