"""Declared, validated parameters for methods and attacks.

A method or attack declares `params = {"rho": Param(float, 0.05, check=nonneg, help=...)}`. Values
come from the task's defaults, then the command line; both pass through `Param.parse`, so "8/255"
is accepted wherever a float is, and every bad value produces one clear line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping

from suite.errors import UserError


def parse_number(text: str) -> float:
    """'0.1', '8/255', '1e-3' -> float."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(num.strip())) / float(Fraction(den.strip()))
        return float(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number: {text!r} (write e.g. 0.1 or 8/255)") from None


def parse_bool(text: str) -> bool:
    s = str(text).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (write true or false)")


@dataclass(frozen=True)
class Param:
    type: type
    default: Any
    help: str = ""
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    choices: tuple | None = None
    optional: bool = False  # None allowed (means "derive from the other parameters")

    def parse(self, value: Any) -> Any:
        if self.optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "auto"))):
            return None
        if self.type is float:
            v = value if isinstance(value, (int, float)) and not isinstance(value, bool) else parse_number(value)
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"must be finite, got {value!r}")
        elif self.type is int:
            if isinstance(value, bool):
                raise ValueError(f"not an integer: {value!r}")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            try:
                v = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"not an integer: {value!r}") from None
            if isinstance(value, str) and str(v) != value.strip():
                raise ValueError(f"not an integer: {value!r}")
        elif self.type is bool:
            v = value if isinstance(value, bool) else parse_bool(value)
        else:
            v = self.type(value)
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}, got {v!r}")
        if self.check is not None:
            msg = self.check(v)
            if msg:
                raise ValueError(f"{msg}, got {v!r}")
        return v


def nonneg(v) -> str | None:
    return "must be >= 0" if v < 0 else None


def positive(v) -> str | None:
    return "must be > 0" if v <= 0 else None


def unit_interval(v) -> str | None:
    return "must be in (0, 1]" if not 0 < v <= 1 else None


def at_least_one(v) -> str | None:
    return "must be >= 1" if v < 1 else None


NORMS = ("linf", "l2")


def resolve_params(owner: str, declared: Mapping[str, Param], *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults, overridden by each layer in turn; unknown keys and bad values raise UserError."""
    out = {k: p.default for k, p in declared.items()}
    for layer in layers:
        for key, raw in layer.items():
            if key not in declared:
                known = ", ".join(sorted(declared)) or "(none)"
                raise UserError(f"{owner} has no parameter {key!r}; its parameters: {known}")
            try:
                out[key] = declared[key].parse(raw)
            except ValueError as e:
                raise UserError(f"{owner}: invalid {key}: {e}") from None
    for key, p in declared.items():  # re-check defaults, which may be None placeholders
        if out[key] is None and not p.optional:
            raise UserError(f"{owner}: parameter {key!r} is required")
    return out


def fmt_value(v: Any) -> str:
    """Human form of a parameter value; budgets that are k/255 are written that way."""
    if isinstance(v, float):
        short = f"{v:g}"
        k = v * 255
        # 8/255 reads better than 0.0313725; 0.2 (= 51/255) reads better as itself
        if 0 < v < 1 and abs(k - round(k)) < 1e-6 and round(k) >= 1 and len(short.lstrip("0.")) > 3:
            return f"{int(round(k))}/255"
        return short
    return str(v)


def parse_spec(text: str, *, kind: str, example: str) -> tuple[str, list[tuple[str, str]]]:
    """'name:key=value,key=value' -> (name, [(key, value), ...]): the spec syntax of attacks and
    analyses (`kind` and `example` name them in the error)."""
    text = str(text).strip()
    name, _, rest = text.partition(":")
    if not name.strip():
        raise UserError(f"{kind} spec {text!r}: expected a name first (example: {example})")
    params = []
    if rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise UserError(f"{kind} spec {text!r}: expected key=value after ':', got {item!r} "
                                f"(example: {example})")
            params.append((key.strip(), value.strip()))
    return name.strip(), params
