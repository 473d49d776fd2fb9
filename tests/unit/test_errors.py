"""The exception tree maps to the documented exit codes."""

from __future__ import annotations

import pytest

from launcher import errors


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.UsageError("x"), 2),
        (errors.SpecError([errors.Problem("spec.a", "bad")]), 2),
        (errors.PodInfoError("x"), 3),
        (errors.NetworkError("x"), 3),
        (errors.StateCacheError("x"), 3),
        (errors.HypervisorError("x"), 4),
        (errors.StateError("Running", ["Created"]), 4),
        (errors.ApiError("vm.boot", 500, "boom"), 4),
        (errors.GraceExpiredError("x"), 5),
        (errors.StatusServerError("x"), 6),
        (RuntimeError("x"), 1),
    ],
)
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert errors.exit_code_for(exc) == code


def test_spec_error_lists_every_problem() -> None:
    err = errors.SpecError([errors.Problem("spec.a", "first"), errors.Problem("spec.b", "second")])
    assert err.lines() == ["spec.a: first", "spec.b: second"]
    assert str(err) == "spec.a: first (and 1 more)"


def test_spec_error_needs_a_problem() -> None:
    with pytest.raises(ValueError, match="at least one problem"):
        errors.SpecError([])


def test_api_error_names_endpoint_status_and_body() -> None:
    err = errors.ApiError("vm.add-net", 400, "bad tap\n")
    assert (err.endpoint, err.status, err.body) == ("vm.add-net", 400, "bad tap\n")
    assert "vm.add-net answered HTTP 400" in str(err)
