"""The Kubernetes quantity parser and formatter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.spec.quantity import QuantityError, format_bytes, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1Gi", 1 << 30),
        ("512Mi", 512 << 20),
        ("1G", 10**9),
        ("100M", 10**8),
        ("1.5Gi", 3 << 29),
        ("1e9", 10**9),
        ("1E3", 1000),
        ("2k", 2000),
        ("1Ki", 1024),
        ("123", 123),
        ("+5", 5),
        (".5Ki", 512),
        ("100m", 1),  # 0.1 rounds up to a whole byte, as Kubernetes does
        ("0", 0),
        (1073741824, 1 << 30),
        (2.5, 3),
    ],
)
def test_valid(text: object, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1Gi", '"-1Gi" is negative'),
        (-3, "-3 is negative"),
        ("1GB", '"1GB" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        ("", '"" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        (" 1Gi", '" 1Gi" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        ("Gi", '"Gi" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        ("1e999", '"1e999" is too large'),
        ("1e9999", '"1e9999" is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)'),
        ("1e99", '"1e99" is too large'),
        ("9999999Ei", '"9999999Ei" is too large'),
        (True, "True is not a quantity"),
        (float("nan"), "nan is not a quantity"),
        ([1], "[1] is not a quantity"),
    ],
)
def test_invalid(text: object, message: str) -> None:
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("size", "text"),
    [(1 << 30, "1Gi"), (1024 * 10**6, "1024M"), (256 << 20, "256Mi"), (7, "7"), (0, "0")],
)
def test_format(size: int, text: str) -> None:
    assert format_bytes(size) == text


@given(st.integers(min_value=0, max_value=1 << 62))
def test_format_round_trips(size: int) -> None:
    assert parse_quantity(format_bytes(size)) == size


@given(st.text(max_size=20))
def test_garbage_is_quantity_error_or_int(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(value, int)
    assert value >= 0
