"""The one reader of users' tables: study files, target files, ``[compression]`` and the JSON of a
per-layer configuration.

Every value a user writes is read through :class:`Table` (a table of keys) or the ``check_*``
rules (one value), so a wrong value is refused the same way everywhere: one line naming the
file, the table and the key, what was expected and what was found, e.g.::

    studies/s.toml [study] n_trials: expected an integer >= 1, got 'many'
    targets/board.toml [protocol] statistic: expected one of median, min, got 'mean'
    config.linear['blocks.0.attn.qkv'].rank: expected an integer or null, got 1.5

A location is ``where`` and a key joined by :func:`key_path`: a space after a TOML table header
(``file [table] key``), a dot inside a nested object (``config.linear['x'].rank``).
"""

from __future__ import annotations

import builtins
import math
import re
from typing import Any, Mapping

from vitune.errors import ConfigError


def _is_object(where: str) -> bool:
    """Whether ``where`` is inside a nested object (``config.linear['x']``, ``methods``) rather than
    a TOML file or table (``s.toml``, ``s.toml [study]``, ``s.toml [[space.tie]] #2``)."""
    return where.endswith("']") or (re.fullmatch(r"[A-Za-z_][\w.]*", where) is not None and not where.endswith(".toml"))


def key_path(where: str, key: str) -> str:
    """``where`` and ``key`` as one location: ``file [table] key`` in a TOML file, ``object.key``
    inside a nested object."""
    if not where:
        return key
    return f"{where}.{key}" if _is_object(where) else f"{where} {key}"


def _toml_parts(where: str) -> tuple[str, str] | None:
    """(file, dotted table name) of a TOML location ``file [a.b]`` or ``file``; None otherwise."""
    if _is_object(where):
        return None
    m = re.fullmatch(r"(.*?) \[([\w.]+)\]", where)
    return (m.group(1), m.group(2)) if m else (where, "")


def is_number(value: Any) -> bool:
    """An int or float that is not a bool and not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def check_choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def check_between(value: Any, lo: float, hi: float, where: str, lo_open: bool = False, hi_open: bool = True) -> float:
    """A number in the interval from ``lo`` to ``hi`` (each end open or closed)."""
    ok = is_number(value) and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{where}: expected a number in {left}{lo:g}, {hi:g}{right}, got {value!r}")
    return float(value)


def check_int(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def check_prune_ratio(value: Any, where: str) -> float:
    """The share of heads or MLP neurons removed: [0, 1) (1 would remove the whole unit)."""
    if not is_number(value):
        raise ConfigError(f"{where}: expected a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{where}: prune ratio {value!r} is outside [0, 1)")
    return float(value)


def check_rank_fraction(value: Any, where: str) -> float:
    """The share of a layer's full rank kept: (0, 1]."""
    if not is_number(value) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{where}: rank fraction {value!r} must be in (0, 1]")
    return float(value)


class Table:
    """A table being read: typed getters whose errors name ``where`` and the key.

    ``allowed`` lists the keys the table may have (None: any); an unknown key is refused at
    construction, so a typo is never silently ignored."""

    def __init__(self, data: Any, where: builtins.str, allowed: tuple[builtins.str, ...] | set[builtins.str] | None = None, kind: builtins.str = "a table"):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected {kind}, got {type(data).__name__}")
        if allowed is not None:
            extra = sorted(set(data) - set(allowed))
            if extra:
                raise ConfigError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")
        self.data: Mapping[str, Any] = data
        self.where = where

    def at(self, key: builtins.str) -> builtins.str:
        """The location of ``key`` in this table, for a message."""
        return key_path(self.where, key)

    def __contains__(self, key: builtins.str) -> builtins.bool:
        return key in self.data

    def get(self, key: builtins.str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def fail(self, key: builtins.str, expected: builtins.str) -> ConfigError:
        return ConfigError(f"{self.at(key)}: expected {expected}, got {self.data.get(key)!r}")

    def str(self, key: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...] | None = None) -> builtins.str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        if choices:
            check_choice(value, choices, self.at(key))
        return value

    def int(self, key: builtins.str, default: builtins.int, minimum: builtins.int = 0) -> builtins.int:
        return check_int(self.data.get(key, default), self.at(key), minimum)

    def float(self, key: builtins.str, default: builtins.float, minimum: builtins.float = 0.0) -> builtins.float:
        value = self.data.get(key, default)
        if not is_number(value) or value < minimum:
            raise self.fail(key, f"a number >= {minimum}")
        return float(value)

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def strings(self, key: builtins.str, default: tuple[builtins.str, ...]) -> tuple[builtins.str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings")
        return tuple(value)

    def table(self, key: builtins.str, allowed: tuple[builtins.str, ...] | set[builtins.str] | None = None, required: builtins.bool = False) -> "Table":
        """The sub-table ``[key]`` (an empty one when absent and not ``required``)."""
        if key not in self.data:
            if required:
                raise ConfigError(f"{self.where}: missing table [{key}]")
            return Table({}, self._sub(key), allowed)
        return Table(self.data[key], self._sub(key), allowed)

    def _sub(self, key: builtins.str) -> builtins.str:
        parts = _toml_parts(self.where)
        if parts is None:
            return key_path(self.where, key)
        file, name = parts
        return f"{file} [{name + '.' if name else ''}{key}]"

    def tables(self, key: builtins.str, allowed: tuple[builtins.str, ...] | set[builtins.str] | None = None) -> list["Table"]:
        """The array of tables ``[[key]]``, each named by its position (``file [[space.override]] #2``)."""
        value = self.data.get(key, [])
        parts = _toml_parts(self.where) or (self.where, "")
        name = f"{parts[1] + '.' if parts[1] else ''}{key}"
        if not isinstance(value, list):
            raise ConfigError(f"{parts[0]} [{name}]: expected [[{name}]] tables")
        return [Table(item, f"{parts[0]} [[{name}]] #{i + 1}", allowed) for i, item in enumerate(value)]


__all__ = ["Table", "check_between", "check_choice", "check_int", "check_prune_ratio", "check_rank_fraction", "is_number", "key_path"]
