"""Numbers for readers: milliseconds, MACs, sizes and F1 formatted once, for notebook tables and the index."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd

MISSING = "–"  # an en dash: what a table shows for NaN, None or a missing value


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for None, NaN, infinities and anything that is not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def ms(value: Any) -> str:
    """Milliseconds with 2 decimals: ``6.64 ms``."""
    n = _number(value)
    return MISSING if n is None else f"{n:.2f} ms"


def seconds(value: Any) -> str:
    """Seconds with 2 decimals below a minute, else minutes and seconds: ``3.20 s``, ``5 min 04 s``."""
    n = _number(value)
    if n is None:
        return MISSING
    if n < 60:
        return f"{n:.2f} s"
    minutes, rest = divmod(round(n), 60)
    return f"{minutes} min {rest:02d} s"


def macs(value: Any) -> str:
    """Multiply-accumulates in millions: ``13.5 M``."""
    n = _number(value)
    return MISSING if n is None else f"{n / 1e6:.1f} M"


def count(value: Any) -> str:
    """A count in millions above 100,000 (``2.22 M``), else with thousands separators."""
    n = _number(value)
    if n is None:
        return MISSING
    return f"{n / 1e6:.2f} M" if abs(n) >= 1e5 else f"{n:,.0f}"


def size_mb(value: Any) -> str:
    """Bytes as megabytes with 2 decimals: ``8.91 MB``."""
    n = _number(value)
    return MISSING if n is None else f"{n / 1e6:.2f} MB"


def f1(value: Any) -> str:
    """F1 (or any fraction) with 3 decimals: ``0.912``."""
    n = _number(value)
    return MISSING if n is None else f"{n:.3f}"


def score(value: Any) -> str:
    """A competition score with 4 decimals."""
    n = _number(value)
    return MISSING if n is None else f"{n:.4f}"


def ratio(value: Any) -> str:
    """A ratio against a reference: ``1.71x``."""
    n = _number(value)
    return MISSING if n is None else f"{n:.2f}x"


def text(value: Any) -> str:
    """Anything else: None and NaN as the missing mark, floats with 4 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# which formatter a column gets, by its name
COLUMN_FORMATS: dict[str, Callable[[Any], str]] = {
    "latency_b1_ms": ms,
    "latency_b1_p90_ms": ms,
    "b1_ms": ms,
    "b32_ms": ms,
    "submit_s": seconds,
    "seconds": seconds,
    "macs": macs,
    "params": count,
    "size_bytes": size_mb,
    "f1_test": f1,
    "f1_public": f1,
    "f1_private": f1,
    "f1_test_all_classes": f1,
    "accuracy_test": f1,
    "delta_f1": f1,
    "f1_change": f1,
    "submit_f1_change": f1,
    "top1_agreement": f1,
    "delta_f1_control": f1,
    "score_published": score,
    "score_relative": score,
    "speedup_b1": ratio,
    "speedup_b32": ratio,
}


def column_format(column: str) -> Callable[[Any], str]:
    """The formatter for a column name: by name, else by its suffix (``_ms``, ``_s``, ``macs``, ``f1``), else text."""
    if column in COLUMN_FORMATS:
        return COLUMN_FORMATS[column]
    for suffix, formatter in (("_ms", ms), ("_s", seconds), ("macs", macs), ("_bytes", size_mb), ("f1", f1)):
        if column.endswith(suffix):
            return formatter
    return text


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` with every cell a string formatted for its column (what notebooks display)."""
    return pd.DataFrame(
        {column: [column_format(str(column))(v) for v in table[column]] for column in table.columns},
        index=table.index,
    )
