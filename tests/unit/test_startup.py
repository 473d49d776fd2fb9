"""launcher.startup's helpers: lazy exports import on first use and only then."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from launcher.startup import lazy_exports


def test_lazy_exports_import_on_first_use_and_cache() -> None:
    code = """
        import sys, types
        from launcher.startup import lazy_exports
        pkg = types.ModuleType("fakepkg")
        sys.modules["fakepkg"] = pkg
        pkg.__getattr__ = lazy_exports("fakepkg", {"dumps": "json", "Fraction": "fractions"})
        before = "fractions" in sys.modules
        value = pkg.Fraction
        print(before, "fractions" in sys.modules, "Fraction" in vars(pkg), value.__name__)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "Fraction"]


def test_unknown_names_raise_attribute_error() -> None:
    getattr_ = lazy_exports("launcher.status", {"Listen": ".listen"})
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        getattr_("Nope")


def test_the_packages_export_what_all_says() -> None:
    import dhcp
    import dhcp.v4
    import dhcp.v6
    import launcher.spec
    import launcher.status

    for package in (dhcp, dhcp.v4, dhcp.v6, launcher.spec, launcher.status):
        for name in package.__all__:
            assert getattr(package, name) is not None, (package.__name__, name)
