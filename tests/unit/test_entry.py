"""The console script forks run's netlink child and privileged helper before the CLI,
and only for run; the cyclic GC is paused for run's start-up and frozen after it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from launcher import cli, entry, netchild, signals, startup
from launcher.errors import NetworkError
from launcher.privsep.helper import Helper


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["run"], "info"),
        (["--log-level", "debug", "run"], "debug"),
        (["--log-level=warning", "run", "--spec", "x"], "warning"),
        (["run", "--log-level"], "info"),  # missing value: the CLI reports it
    ],
)
def test_log_level_is_peeked_for_the_child(argv: list[str], level: str) -> None:
    assert startup._peek_log_level(argv) == level


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run"], "run"),
        (["--log-level", "debug", "--spec", "run", "run"], "run"),
        (["--log-level=debug", "plan", "--spec", "run"], "plan"),
        (["--spec", "x"], None),
    ],
)
def test_the_command_is_found_after_global_options(argv: list[str], command: str) -> None:
    assert startup.command_of(argv) == command


HELPER = object()


@pytest.fixture(autouse=True)
def _signal_handlers() -> Any:
    """``run`` changes this process's SIGTERM/SIGINT handlers: put them back after each test."""
    saved = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _record(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def fake_cli(argv: list[str], *, child: Any = None, helper: Any = None) -> int:
        calls.append((argv, child))
        assert helper is (
            HELPER if startup.command_of(argv) == "run" and argv != ["run", "--help"] else None
        )
        return 0

    def fake_helper(log_level: str | None = None) -> object:
        return HELPER

    monkeypatch.setattr(cli, "main", fake_cli)
    monkeypatch.setattr(Helper, "fork", staticmethod(fake_helper))
    return calls


@pytest.mark.parametrize("argv", [["validate", "--spec", "x"], ["run", "--help"], []])
def test_no_child_for_other_commands_or_help(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    def no_fork(**_: Any) -> netchild.Started:
        raise AssertionError("forked")

    monkeypatch.setattr(netchild, "fork", no_fork)
    calls = _record(monkeypatch)
    assert entry.main(argv) == 0
    assert calls == [(argv, None)]


def test_run_gets_the_forked_child(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    made: list[str | None] = []
    sentinel = object()

    def fake_fork(log_level: str | None = None) -> object:
        made.append(log_level)
        return sentinel

    monkeypatch.setattr(netchild, "fork", fake_fork)
    calls = _record(monkeypatch)
    assert entry.main(["--log-level", "debug", "run", "--spec", str(tmp_path)]) == 0
    assert made == ["debug"] and calls[0][1] is sentinel


def test_run_ignores_stop_signals_once_its_exit_code_is_decided(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interpreter's shutdown puts default handlers back for Python-handled signals;
    a SIGTERM then would kill the process after it decided its exit code."""
    monkeypatch.setattr(netchild, "fork", lambda log_level=None: None)
    _record(monkeypatch)
    assert entry.main(["run"]) == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert entry.main(["validate", "--spec", "x"]) == 0  # other commands: untouched
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_failed_fork_leaves_it_to_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(log_level: str | None = None) -> netchild.Started:
        raise NetworkError("cannot fork the netlink child: no memory")

    monkeypatch.setattr(netchild, "fork", failing)
    calls = _record(monkeypatch)
    assert entry.main(["run"]) == 0
    assert calls == [(["run"], None)]


def _python(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_gc_is_paused_for_start_up_then_frozen_and_back_on() -> None:
    out = _python(
        "import gc\n"
        "from launcher import startup\n"
        "startup.pause_gc()\n"
        "print(gc.isenabled())\n"
        "import launcher.run\n"
        "startup.start_up_done()\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 10000)\n"
    )
    assert out == ["False", "True", "True"]


def test_a_run_called_in_process_leaves_the_callers_gc_alone() -> None:
    out = _python(
        "import gc\n"
        "from launcher import startup\n"
        "gc.disable()\n"
        "startup.start_up_done()\n"
        "print(gc.isenabled(), gc.get_freeze_count())\n"
    )
    assert out == ["False", "0"]
