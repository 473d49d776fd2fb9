"""Kubernetes resource quantities (``1Gi``, ``512Mi``, ``1G``, ``1.5Gi``, ``1e9``, ``100m``).

Called by the spec readers for memory sizes and disk capacities. The grammar is the
one of ``k8s.io/apimachinery/pkg/api/resource``: a decimal number followed by a binary
suffix (Ki Mi Gi Ti Pi Ei), a decimal suffix (n u m k M G T P E) or a decimal exponent
(``e9``/``E9``). Values are exact (``decimal.Decimal``) and fractional results are
rounded up to a whole unit, as Kubernetes does for byte quantities.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = ["QuantityError", "format_bytes", "parse_quantity"]

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<bin>Ki|Mi|Gi|Ti|Pi|Ei)|[eE](?P<exp>[+-]?[0-9]{1,3})|(?P<dec>[numkMGTPE]?))"
)
_MAX = 1 << 80  # far above any real memory or disk size; keeps arithmetic bounded


class QuantityError(ValueError):
    """The value is not a non-negative Kubernetes quantity; the message names it."""


def parse_quantity(value: object) -> int:
    """The quantity ``value`` (str, int or float) as a whole number, rounded up."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(f"{value!r} is not a quantity")
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        amount = _parse_text(value)
    else:
        raise QuantityError(f"{value!r} is not a quantity")
    if amount < 0:
        raise QuantityError(f"{_show(value)} is negative")
    if amount > _MAX:
        raise QuantityError(f"{_show(value)} is too large")
    return math.ceil(amount)


def _parse_text(text: str) -> Decimal:
    match = _QUANTITY.fullmatch(text.strip()) if text.strip() == text else None
    if match is None:
        raise QuantityError(f"{_show(text)} is not a quantity (e.g. 512Mi, 1Gi, 1G, 1e9)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as err:  # pragma: no cover - the regex only admits decimals
        raise QuantityError(f"{_show(text)} is not a quantity") from err
    if match["sign"] == "-":
        number = -number
    if match["bin"]:
        return number * _BINARY[match["bin"]]
    if match["exp"] is not None:
        exponent = int(match["exp"])
        if exponent > 30:
            raise QuantityError(f"{_show(text)} is too large")
        return number.scaleb(exponent)
    return number * _DECIMAL[match["dec"] or ""]


def _show(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def format_bytes(size: int) -> str:
    """The shortest exact quantity for ``size`` bytes: ``1Gi``, ``256Mi``, ``1024M``, ``7``."""
    candidates = [str(size)]
    for suffix, unit in reversed(_BINARY.items()):
        if size and size % unit == 0:
            candidates.append(f"{size // unit}{suffix}")
            break
    for suffix in ("E", "P", "T", "G", "M", "k"):
        unit = int(_DECIMAL[suffix])
        if size and size % unit == 0:
            candidates.append(f"{size // unit}{suffix}")
            break
    # Shortest wins; on a tie the binary form (listed before the decimal one) wins.
    return min(candidates[1:] or candidates, key=len) if size else "0"
