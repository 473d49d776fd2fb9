"""The field reader the spec shapes are parsed with: typed reads that record problems.

Called by ``launcher.spec.virtink`` and ``launcher.spec.kubevirt``. A :class:`Fields`
wraps one mapping of the manifest and knows its path (``spec.instance.interfaces[1]``).
Every read checks the value's type and records a :class:`~launcher.errors.Problem`
instead of raising, so one pass over the document collects every problem; every read
also marks its key consumed, and :meth:`Fields.finish` reports the keys nobody read as
unknown fields. ``null`` counts as absent, as it does for Kubernetes.

A hand-written walker rather than pydantic or jsonschema: importing pydantic costs
tens of milliseconds and several MiB of RSS in a process whose whole budget is 40 MiB,
and neither produces the document's own field paths for both API shapes without as
much glue as this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from launcher.errors import Problem
from launcher.spec.quantity import QuantityError, parse_quantity

__all__ = ["Fields", "Problems", "join", "show", "type_name"]

T = TypeVar("T")
_SHOW_MAX = 60


def show(value: object) -> str:
    """A short JSON rendering of ``value`` for a problem message."""
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _SHOW_MAX else text[: _SHOW_MAX - 4] + '..."'


def type_name(value: object) -> str:
    """The YAML/JSON type of ``value`` with its article: ``a string``, ``an integer``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def join(path: str, key: str | int) -> str:
    """``path`` extended by a mapping key or a list index."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Problems:
    """The problems found so far, in the order they were found."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self._open: list[Fields] = []

    def add(self, path: str, message: str) -> None:
        """Record that the value at ``path`` is wrong."""
        self.items.append(Problem(path, message))

    def wrong_type(self, path: str, value: object, expected: str) -> None:
        """Record that the value at ``path`` is not of the ``expected`` type."""
        got = type_name(value)
        if not isinstance(value, Mapping | list | tuple):
            got = f"{got} {show(value)}"
        self.add(path, f"expected {expected}, got {got}")

    def fields(self, value: object, path: str) -> Fields | None:
        """``value`` as a :class:`Fields` if it is a mapping, else a problem and None."""
        if not isinstance(value, Mapping):
            self.wrong_type(path, value, "a mapping")
            return None
        fields = Fields(value, path, self)
        self._open.append(fields)
        return fields

    def finish_all(self) -> None:
        """Report unknown keys of every mapping that was read (idempotent)."""
        for fields in self._open:
            fields.finish()
        self._open.clear()

    def __bool__(self) -> bool:
        return bool(self.items)


class Fields:
    """One mapping of the manifest being read; see the module docstring."""

    def __init__(self, data: Mapping[object, object], path: str, problems: Problems) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self._consumed: set[object] = set()
        self._finished = False

    # -- plumbing ---------------------------------------------------------------------

    def at(self, key: str) -> str:
        """The path of ``key`` inside this mapping."""
        return join(self.path, key)

    def present(self, key: str) -> bool:
        """Whether ``key`` holds a non-null value (does not consume it)."""
        return self.data.get(key) is not None

    def raw(self, key: str) -> object:
        """The value at ``key`` (None when absent or null), marking it consumed."""
        self._consumed.add(key)
        return self.data.get(key)

    def ignore(self, *keys: str) -> None:
        """Accept ``keys`` without acting on them (documented as ignored)."""
        self._consumed.update(keys)

    def unsupported(self, keys: Mapping[str, str]) -> None:
        """Refuse each present key of ``keys`` with its explanation."""
        for key, why in keys.items():
            if self.raw(key) is not None:
                self.problems.add(self.at(key), why)

    def finish(self) -> None:
        """Report every key that no read consumed as an unknown field."""
        if self._finished:
            return
        self._finished = True
        for key in self.data:
            if key in self._consumed:
                continue
            if isinstance(key, str):
                self.problems.add(join(self.path, key), f"unknown field {show(key)}")
            else:
                self.problems.add(self.path or "<document>", f"key {show(key)} is not a string")

    def _typed(
        self, key: str, kind: type[T] | tuple[type, ...], expected: str, required: bool
    ) -> T | None:
        value = self.raw(key)
        if value is None:
            if required:
                self.problems.add(self.at(key), "is required")
            return None
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int subclass: `sockets: true` must not read as 1.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.problems.wrong_type(self.at(key), value, expected)
            return None
        return value  # type: ignore[return-value]

    # -- typed reads --------------------------------------------------------------------

    def string(self, key: str, *, required: bool = False, nonempty: bool = True) -> str | None:
        """A string value; an empty string is a problem unless ``nonempty`` is False."""
        value: str | None = self._typed(key, str, "a string", required)
        if value is not None and nonempty and not value.strip():
            self.problems.add(self.at(key), "must not be empty")
            return None
        return value

    def integer(
        self,
        key: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int | None:
        """An integer within ``[minimum, maximum]``."""
        value: int | None = self._typed(key, int, "an integer", required)
        if value is None:
            return None
        if minimum is not None and value < minimum:
            self.problems.add(self.at(key), f"{value} is less than {minimum}")
            return None
        if maximum is not None and value > maximum:
            self.problems.add(self.at(key), f"{value} is greater than {maximum}")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        """A boolean value (YAML ``true``/``false``, not the string "true")."""
        value: bool | None = self._typed(key, bool, "a boolean", False)
        return value

    def quantity(self, key: str, *, required: bool = False) -> int | None:
        """A Kubernetes quantity (``1Gi``, ``512Mi``, ``1e9``) as a whole number."""
        value = self.raw(key)
        if value is None:
            if required:
                self.problems.add(self.at(key), "is required")
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problems.wrong_type(self.at(key), value, "a quantity such as 1Gi")
            return None
        try:
            return parse_quantity(value)
        except QuantityError as err:
            self.problems.add(self.at(key), str(err))
            return None

    def mapping(self, key: str, *, required: bool = False) -> Fields | None:
        """A nested mapping as :class:`Fields`."""
        value = self.raw(key)
        if value is None:
            if required:
                self.problems.add(self.at(key), "is required")
            return None
        return self.problems.fields(value, self.at(key))

    def marker(self, key: str) -> Fields | None:
        """A present-or-absent object such as ``bridge: {}`` (None when absent)."""
        return self.mapping(key)

    def items(self, key: str) -> Iterator[Fields]:
        """Each mapping of a list of mappings, with paths ``key[i]``."""
        for path, value in self._list(key):
            fields = self.problems.fields(value, path)
            if fields is not None:
                yield fields

    def strings(self, key: str) -> Iterator[tuple[str, str]]:
        """Each string of a list of strings, as (path, value)."""
        for path, value in self._list(key):
            if isinstance(value, str):
                yield path, value
            else:
                self.problems.wrong_type(path, value, "a string")

    def string_map(self, key: str) -> dict[str, str]:
        """A mapping of strings to strings (labels, annotations)."""
        value = self.raw(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.wrong_type(self.at(key), value, "a mapping of strings")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                self.problems.add(self.at(key), f"key {show(k)} is not a string")
            elif not isinstance(v, str):
                self.problems.wrong_type(join(self.at(key), k), v, "a string")
            else:
                out[k] = v
        return out

    def convert(self, key: str, value: str, parse: Callable[[str], T]) -> T | None:
        """``parse(value)``; a ``ValueError`` becomes a problem at ``key``."""
        try:
            return parse(value)
        except ValueError as err:
            self.problems.add(self.at(key), str(err))
            return None

    def _list(self, key: str) -> Iterator[tuple[str, object]]:
        value = self.raw(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.problems.wrong_type(self.at(key), value, "a list")
            return
        for index, item in enumerate(value):
            yield join(self.at(key), index), item
