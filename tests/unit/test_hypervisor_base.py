"""Unit tests for hypervisor.base: the transition table and the StateError helpers."""

from __future__ import annotations

import pytest

from hypervisor.base import REQUIRED, TRANSITIONS, advance, require
from hypervisor.errors import HypervisorError, StateError
from hypervisor.machine import VmState


def test_every_state_has_a_transition_row() -> None:
    assert set(TRANSITIONS) == set(VmState)


@pytest.mark.parametrize("terminal", [VmState.SHUTDOWN, VmState.FAILED])
def test_terminal_states_go_nowhere(terminal: VmState) -> None:
    for new in VmState:
        if new is terminal:
            continue
        with pytest.raises(StateError) as info:
            advance(terminal, new)
        assert info.value.state is terminal


def test_allowed_path_created_running_paused_running_shutdown() -> None:
    state = VmState.CREATED
    for new in (VmState.RUNNING, VmState.PAUSED, VmState.RUNNING, VmState.SHUTDOWN):
        state = advance(state, new)
    assert state is VmState.SHUTDOWN


def test_created_cannot_pause_and_error_names_sources() -> None:
    with pytest.raises(StateError) as info:
        advance(VmState.CREATED, VmState.PAUSED)
    assert info.value.required == (VmState.RUNNING,)
    assert "Running" in str(info.value) and "Created" in str(info.value)
    assert isinstance(info.value, HypervisorError)


def test_same_state_is_allowed() -> None:
    assert advance(VmState.RUNNING, VmState.RUNNING) is VmState.RUNNING


def test_require_start_only_when_created() -> None:
    require("start", VmState.CREATED)
    with pytest.raises(StateError) as info:
        require("start", VmState.RUNNING)
    assert info.value.required == (VmState.CREATED,)


def test_require_power_button_refused_after_shutdown() -> None:
    with pytest.raises(StateError, match="Shutdown"):
        require("power_button", VmState.SHUTDOWN)


def test_hotplug_needs_a_live_vm() -> None:
    for op in ("add_net", "add_vfio", "add_vdpa", "remove_device", "counters"):
        assert REQUIRED[op] == {VmState.RUNNING, VmState.PAUSED}
        require(op, VmState.PAUSED)
        with pytest.raises(StateError):
            require(op, VmState.CREATED)
