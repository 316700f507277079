"""Input checks shared by the ZeRO modules: one place that turns a bad number into a clear UsageError.

Every message echoes the bad value and says what would be accepted, so a typo on
the command line ends in one line, not a traceback.
"""

from __future__ import annotations

import math
import re

from ..errors import UsageError

STAGES = (0, 1, 2, 3)

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def check_stage(stage: object) -> int:
    """``stage`` must be one of the ZeRO stages 0, 1, 2, 3."""
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in STAGES:
        raise UsageError(
            f"stage={stage!r} is not a ZeRO stage; use 0 (plain data parallel), "
            "1 (optimizer states), 2 (+ gradients) or 3 (+ parameters)"
        )
    return stage


def check_positive_int(name: str, value: object) -> int:
    """A count (parameters, ranks, nodes, steps): a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{name}={value!r} is not a whole number; use a positive integer such as 8")
    if value < 1:
        raise UsageError(f"{name}={value} must be at least 1")
    return value


def check_positive_float(name: str, value: object) -> float:
    """A size, bandwidth or latency: a finite number > 0 (latency may be 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{name}={value!r} is not a number; use a positive number such as 50")
    if value <= 0:
        raise UsageError(f"{name}={value} must be greater than 0")
    return float(value)


def parse_count(name: str, text: str) -> int:
    """``"7.5e9"``, ``"7.5B"``, ``"2851M"``, ``"1T"``, ``"128000"`` -> an integer count.

    Suffixes are decimal, as in model names: K = 1e3, M = 1e6, B or G = 1e9, T = 1e12.
    """
    raw = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)", raw)
    if not m:
        raise UsageError(
            f"{name}={text!r} is not a count; write it like 7.5e9, 7.5B, 2851M or 1T"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not value.is_integer():
        raise UsageError(f"{name}={text!r} is not a whole number of items")
    return check_positive_int(name, int(value))


def parse_int_list(name: str, text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``; every entry must be a positive integer."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit():
            raise UsageError(f"{name}={text!r} is not a comma-separated list of positive integers such as 1,2,4,8")
        out.append(check_positive_int(name, int(part)))
    return out
