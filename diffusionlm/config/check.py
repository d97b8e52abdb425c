"""Field rules for the configuration dataclasses: checked on construction, never clamped.

    RULES = {"steps": Int(lo=1), "clip": Opt(Num(lo=0, lo_open=True), "no clipping"), ...}
    check_fields(self, RULES, "train")   # in __post_init__

A bad value raises ValueError (ConfigTypeError, both a TypeError and a ValueError, for a value of
the wrong kind) naming the field, the value and what is allowed, on one line, e.g.

    train.clip = -1: must be a number > 0 (or null: no clipping)
    train.batch_size = true: must be an int >= 1, not a bool

`bool` is never accepted as a number (JSON `true` is not 1), and a float is not an int. Every
field of a checked class has a rule (tests/test_config_validation.py checks that), so a new field
cannot slip through unchecked. This module imports nothing of the package.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Optional, Sequence

__all__ = ["ConfigTypeError", "Rule", "Int", "Num", "Bool", "Str", "Choice", "Dict", "Pair", "Opt", "check_fields"]


class ConfigTypeError(TypeError, ValueError):
    """A value of the wrong kind (a bool for an int, a string for a number): a TypeError that
    callers catching ValueError for bad configuration see too."""


class Rule:
    what: str = "a value"

    def check(self, v: Any) -> Optional[str]:  # None: fine; else what is wanted
        raise NotImplementedError

    def type_error(self, v: Any) -> bool:
        return False


def _n(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _a(v: Any) -> str:
    """'a float', 'an int': the kind of a value, with its article."""
    name = type(v).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _range(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_n(lo)}, {_n(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_n(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_n(hi)}"
    return ""


@dataclass
class Int(Rule):
    lo: Optional[int] = None
    hi: Optional[int] = None

    def type_error(self, v):
        return isinstance(v, bool) or not isinstance(v, int)

    def check(self, v):
        want = f"an int {_range(self.lo, self.hi, False, False)}".rstrip()
        if isinstance(v, bool):
            return f"{want}, not a bool"
        if not isinstance(v, int):
            return f"{want}, not {_a(v)}"
        if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            return want
        return None


@dataclass
class Num(Rule):
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def type_error(self, v):
        return isinstance(v, bool) or not isinstance(v, (int, float))

    def check(self, v):
        want = f"a number {_range(self.lo, self.hi, self.lo_open, self.hi_open)}".rstrip()
        if isinstance(v, bool):
            return f"{want}, not a bool"
        if not isinstance(v, (int, float)):
            return f"{want}, not {_a(v)}"
        if not math.isfinite(v):
            return f"a finite {want.removeprefix('a ')}"
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return want
        if self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi):
            return want
        return None


@dataclass
class Bool(Rule):
    def type_error(self, v):
        return not isinstance(v, bool)

    def check(self, v):
        return None if isinstance(v, bool) else "true or false"


@dataclass
class Str(Rule):
    def type_error(self, v):
        return not isinstance(v, str)

    def check(self, v):
        if not isinstance(v, str):
            return f"a string, not {_a(v)}"
        return None if v.strip() else "a non-empty string"


class Choice(Rule):
    def __init__(self, *choices: str):
        self.choices = choices

    def type_error(self, v):
        return not isinstance(v, str)

    def check(self, v):
        return None if isinstance(v, str) and v in self.choices else f"one of {', '.join(self.choices)}"


@dataclass
class Dict(Rule):
    def type_error(self, v):
        return not isinstance(v, dict)

    def check(self, v):
        return None if isinstance(v, dict) else f"an object, not {_a(v)}"


class List(Rule):
    def type_error(self, v):
        return not isinstance(v, (list, tuple))

    def check(self, v):
        return None if isinstance(v, (list, tuple)) else f"a list, not {_a(v)}"


@dataclass
class Pair(Rule):
    item: Num

    def type_error(self, v):
        return not isinstance(v, (list, tuple)) or any(self.item.type_error(x) for x in v)

    def check(self, v):
        i = self.item
        want = f"a list of two numbers, each {_range(i.lo, i.hi, i.lo_open, i.hi_open)}"
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            return want
        return want if any(i.check(x) for x in v) else None


@dataclass
class Opt(Rule):
    rule: Rule
    none_means: str = ""

    def type_error(self, v):
        return v is not None and self.rule.type_error(v)

    def check(self, v):
        if v is None:
            return None
        bad = self.rule.check(v)
        return None if bad is None else f"{bad} (or null{': ' + self.none_means if self.none_means else ''})"


def check_fields(obj: Any, rules: "dict[str, Rule]", section: str) -> None:
    """Check every field of the dataclass `obj` that has a rule; raise on the first bad one."""
    for f in fields(obj):
        rule = rules.get(f.name)
        if rule is None:
            continue
        v = getattr(obj, f.name)
        bad = rule.check(v)
        if bad is not None:
            shown = "null" if v is None else ("true" if v is True else "false" if v is False else repr(v))
            err = ConfigTypeError if rule.type_error(v) else ValueError
            raise err(f"{section}.{f.name} = {shown}: must be {bad}")


def unruled(cls: type, rules: "dict[str, Rule]") -> "Sequence[str]":
    """Fields of a dataclass that have no rule (a test keeps this empty)."""
    return [f.name for f in fields(cls) if f.name not in rules]
