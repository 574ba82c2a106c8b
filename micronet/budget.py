"""FLOP/parameter budgets: ceilings kept as data beside the model, recomputed by CI.

A budgets file is TOML, one table per variant::

    [m0]
    madds = 6_200_000     # MAdds at input_size (the counting rule of micronet.counting)
    params = 1_800_000
    input_size = 224      # optional, default the variant's own (224; pose-*: 256x192, seg-*: 1024x2048, not settable)

A change that makes a variant bigger than its budget fails ``micronet budget check`` until the
budget is raised on purpose, in the same review.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import MicronetError
from .registry import resolve_variant

LIMIT_KEYS = ("madds", "params")
OPTION_KEYS = ("input_size",)


@dataclass
class BudgetResult:
    """One ceiling of the budgets file against the recomputed figure.

    ``recorded`` is the variant's own figure from its metadata (``micronet.registry``) when the budget
    is at the size the metadata states (224 px), else None. The ceiling stays the gate; a measured
    figure that differs from the recorded one means the model changed and the metadata must follow.
    """

    variant: str
    metric: str
    measured: int
    allowed: int
    recorded: int | None = None

    @property
    def ok(self) -> bool:
        return self.measured <= self.allowed

    @property
    def matches_metadata(self) -> bool | None:
        return None if self.recorded is None else self.measured == self.recorded


def read_budgets(path: str | Path) -> dict[str, dict[str, int]]:
    """The file's ``{variant: {key: value}}``, every mistake one line naming the file (and section).

    A file that sets no limit at all is a mistake too: a gate that checks nothing must not pass.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MicronetError(f"budgets file not found: {path}") from None
    except IsADirectoryError:
        raise MicronetError(f"budgets file {path} is a directory; give the TOML file") from None
    except OSError as exc:
        raise MicronetError(f"cannot read budgets file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MicronetError(f"budgets file {path} is not valid TOML: {exc}") from None
    if not data:
        raise MicronetError(f"budgets file {path} sets no budgets: add a [VARIANT] table with madds and/or params")
    for variant, table in data.items():
        try:
            info = resolve_variant(variant, task=None)
        except MicronetError as exc:
            raise MicronetError(f"budgets file {path}: [{variant}]: {exc}") from None
        if not isinstance(table, dict):
            raise MicronetError(f"budgets file {path}: [{variant}] must be a table")
        for key, value in table.items():
            if key not in LIMIT_KEYS + OPTION_KEYS:
                raise MicronetError(f"budgets file {path}: [{variant}] has unknown key {key!r} "
                                    f"(known: {', '.join(LIMIT_KEYS + OPTION_KEYS)})")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise MicronetError(f"budgets file {path}: [{variant}] {key} must be a positive integer")
        if not any(key in table for key in LIMIT_KEYS):
            raise MicronetError(f"budgets file {path}: [{variant}] sets no limit; add madds and/or params")
        if info.task != "classification" and "input_size" in table:
            raise MicronetError(f"budgets file {path}: [{variant}] input_size is for the square classifiers; a "
                                f"{info.task} budget is at its own {info.input_size[0]}x{info.input_size[1]}")
    return data


def check_budgets(path: str | Path) -> list[BudgetResult]:
    """Every (variant, metric) pair of the file with its measured and allowed value."""
    from .counting import count_variant

    results = []
    for variant, table in read_budgets(path).items():
        info = resolve_variant(variant, task=None)
        input_size = table.get("input_size")  # None: the variant's own, where its metadata's figures are
        try:
            counts = count_variant(variant, input_size=input_size)
        except MicronetError as exc:  # e.g. an input_size that is not a multiple of 32
            raise MicronetError(f"budgets file {path}: [{variant}]: {exc}") from None
        measured = {"madds": counts.madds, "params": counts.params}
        own = input_size is None or (input_size, input_size) == info.input_size
        recorded = recorded_figures(variant) if own else {}
        results += [BudgetResult(variant, key, measured[key], table[key], recorded.get(key))
                    for key in LIMIT_KEYS if key in table]
    return results


def recorded_figures(variant: str) -> dict[str, int]:
    """A variant's own params and MAdds (at its own input size) from its metadata, whether or not a budget names them."""
    info = resolve_variant(variant, task=None)
    return {"madds": info.madds, "params": info.params}
