"""``--vmm-user`` parsing and capability names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.errors import UsageError
from launcher.options import RunOptions
from launcher.privsep import caps
from launcher.privsep.vmm import DEFAULT_VMM_USER, VmmUser, parse_user


def test_default_is_kubevirts_qemu_user_and_keep_is_none() -> None:
    assert DEFAULT_VMM_USER == "107:107" == RunOptions(Path("x")).vmm_user
    assert parse_user(DEFAULT_VMM_USER) == VmmUser(107, 107)
    assert parse_user("1000") == VmmUser(1000, 1000)
    assert parse_user("keep") is None


@pytest.mark.parametrize("text", ["qemu", "107:", "-1", "1:2:3", "", "4294967295"])
def test_anything_else_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match="--vmm-user"):
        parse_user(text)
    with pytest.raises(UsageError, match="--vmm-user"):
        RunOptions(Path("x"), vmm_user=text).check()


def test_capability_names() -> None:
    assert caps.names(0x3400) == ["NET_BIND_SERVICE", "NET_ADMIN", "NET_RAW"]
    assert caps.names(1 << 40) == ["cap_40"]
    assert caps.mask(["NET_ADMIN", "NET_RAW"]) == 0x3000


def test_proc_status_is_read_for_this_process() -> None:
    info = caps.read_proc(os.getpid())
    assert (info.pid, info.uid, info.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert info.caps.effective == caps.current().effective
