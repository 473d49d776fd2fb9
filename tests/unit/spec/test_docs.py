"""docs/spec.md stays true to the code: every ignored and refused field is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.spec import kubevirt, parts, virtink
from launcher.spec.common import parse_mac

DOC = (Path(__file__).parents[3] / "docs/spec.md").read_text()
DOCUMENTED = set(re.findall(r"`([^`\n]+)`", DOC))

IGNORED = {
    "metadata": parts.METADATA_IGNORED,
    "virtink spec": virtink.SPEC_IGNORED,
    "kubevirt vm spec": kubevirt.VM_SPEC_IGNORED,
    "kubevirt instance spec": kubevirt.VMI_SPEC_IGNORED,
    "domain": kubevirt.DOMAIN_IGNORED,
    "devices": kubevirt.DEVICES_IGNORED,
}


@pytest.mark.parametrize("where", sorted(IGNORED))
def test_ignored_fields_documented(where: str) -> None:
    missing = [name for name in IGNORED[where] if name not in DOCUMENTED]
    assert missing == []


def test_refused_bindings_and_volumes_documented() -> None:
    refused = (*kubevirt._UNSUPPORTED_BINDINGS, *kubevirt._UNSUPPORTED_VOLUMES)
    assert [name for name in refused if name not in DOCUMENTED] == []


def test_limits_documented() -> None:
    assert "16Mi" in DOC
    assert "16Ti" in DOC
    assert "1 and 255" in DOC


@pytest.mark.parametrize(
    "mac", ["02:00:00:aa:bb:cc", "02-00-00-AA-BB-CC", "52:54:00:Ab:cD:eF", "fe-ff-ff-ff-ff-ff"]
)
def test_mac_normalization_is_idempotent(mac: str) -> None:
    once = parse_mac(mac)
    assert once == parse_mac(once)
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", once)
