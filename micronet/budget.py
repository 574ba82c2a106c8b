"""FLOP/parameter budgets: ceilings kept as data beside the model, recomputed by CI.

A budgets file is TOML, one table per variant::

    [m0]
    madds = 6_200_000     # MAdds at input_size (the counting rule of micronet.counting)
    params = 1_800_000
    input_size = 224      # optional, default 224

A change that makes a variant bigger than its budget fails ``micronet budget check`` until the
budget is raised on purpose, in the same review.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import MicronetError

LIMIT_KEYS = ("madds", "params")
OPTION_KEYS = ("input_size",)


@dataclass
class BudgetResult:
    variant: str
    metric: str
    measured: int
    allowed: int

    @property
    def ok(self) -> bool:
        return self.measured <= self.allowed


def read_budgets(path: str | Path) -> dict[str, dict[str, int]]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MicronetError(f"budgets file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MicronetError(f"budgets file {path} is not valid TOML: {exc}") from None
    from .registry import resolve_variant

    for variant, table in data.items():
        resolve_variant(variant)
        if not isinstance(table, dict):
            raise MicronetError(f"budgets file {path}: [{variant}] must be a table")
        for key, value in table.items():
            if key not in LIMIT_KEYS + OPTION_KEYS:
                raise MicronetError(f"budgets file {path}: [{variant}] has unknown key {key!r} "
                                    f"(known: {', '.join(LIMIT_KEYS + OPTION_KEYS)})")
            if not isinstance(value, int) or value <= 0:
                raise MicronetError(f"budgets file {path}: [{variant}] {key} must be a positive integer")
    return data


def check_budgets(path: str | Path) -> list[BudgetResult]:
    """Every (variant, metric) pair of the file with its measured and allowed value."""
    from .counting import count_variant

    results = []
    for variant, table in read_budgets(path).items():
        counts = count_variant(variant, input_size=table.get("input_size", 224))
        measured = {"madds": counts.madds, "params": counts.params}
        results += [BudgetResult(variant, key, measured[key], table[key]) for key in LIMIT_KEYS if key in table]
    return results
