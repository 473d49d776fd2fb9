"""What the long-lived launcher imports: no pyroute2 (the netlink child has it), no HTTP
stack until the status endpoint is used (and then no aiohttp), no TLS contexts in
aiohttp. Each check runs in a fresh interpreter, since this test process has imported
everything."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from launcher import cli
from launcher.network.state import DEFAULT_STATE_DIR
from launcher.startup import without_ssl

#: Everything ``virt-launcher run`` imports in its own process up to a running VM with
#: DHCP, hot plug and the status task (before the first status request).
RUN_PATH = (
    "launcher.cli",
    "launcher.agent",
    "launcher.run",
    "launcher.status.listen",
    "launcher.status.task",
    "launcher.hotplug.manager",
    "hypervisor.qemu",
    "dhcp.v4.server",
    "dhcp.v6.server",
    "dhcp.ra",
)


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_run_path_imports_neither_pyroute2_nor_the_http_stack() -> None:
    out = _python(
        f"""
        import importlib, sys
        for name in {RUN_PATH!r}:
            importlib.import_module(name)
        heavy = ("pyroute2", "aiohttp", "prometheus_client", "psutil", "pycdlib")
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set(heavy)))
        """
    )
    assert out == "[]"


def test_the_status_server_serves_without_aiohttp() -> None:
    """The endpoint's HTTP is launcher.status.http: aiohttp's 8-13 MiB stay out."""
    out = _python(
        """
        import sys
        import launcher.status.server
        print("aiohttp" in sys.modules)
        """
    )
    assert out == "False"


def test_the_cloud_hypervisor_preload_brings_aiohttp_without_tls_contexts() -> None:
    out = _python(
        """
        import sys
        from launcher.startup import preload_hypervisor
        preload_hypervisor("cloud-hypervisor")
        import aiohttp.connector as connector
        print(connector.ssl is None, "ssl" in sys.modules)
        """
    )
    # aiohttp saw no ssl (no CA bundle parsed); ssl itself stays importable for others
    assert out.split()[0] == "True"


def test_without_ssl_hides_ssl_only_inside_the_block() -> None:
    before = sys.modules.get("ssl")
    with without_ssl(), pytest.raises(ImportError):
        import ssl
    assert sys.modules.get("ssl") is before
    import ssl

    assert ssl.PROTOCOL_TLS_CLIENT  # importable again afterwards


def test_cli_state_dir_default_is_the_network_packages() -> None:
    assert cli.DEFAULT_STATE_DIR == DEFAULT_STATE_DIR


def test_pyroute2_is_only_imported_by_submodule() -> None:
    """lean_import() registers pyroute2 without its __init__: a package-level import
    (``from pyroute2 import X`` / ``import pyroute2``) anywhere in the launcher would fail."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    bad = []
    for package in ("launcher", "hypervisor", "dhcp"):
        for path in (root / package).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.match(r"\s*(from pyroute2 import (?!netns\b)|import pyroute2\s*$)", line):
                    bad.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert bad == []


def test_the_status_reads_of_links_and_neighbours_import_no_pyroute2() -> None:
    """The collector's link counters and neighbour table come from launcher.network.linkstats
    (rtnetlink decoded by hand): pyroute2 would add ≈5.4 MiB at the first status request."""
    out = _python(
        """
        import sys
        from launcher.network.linkstats import LinkReader
        reader = LinkReader()
        links = reader.links(None)
        reader.neighbours(list(links))
        print("lo" in links, "pyroute2" in sys.modules)
        """
    )
    assert out == "True False"
