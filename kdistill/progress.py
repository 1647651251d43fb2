"""The library's one progress convention; the library itself never draws.

Long-running functions take ``progress: Progress | None`` and call ``progress(description, completed, total)``
(``total`` None when unknown) as work advances, for every kind of work alike (data installs, expert collection,
distillation, benchmarks). Training loops report whole records through ``on_iteration`` / ``on_update`` /
``on_epoch`` instead. The CLI turns the calls into bars or lines on stderr (``kdistill.cli.options``).
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, "int | None"], None]


def recent_rate(records: list[dict], time_keys: tuple[str, ...], window: int = 20) -> float | None:
    """Steps per second of a training run over its last ``window`` metrics records that logged ``steps_per_s``:
    the steps they did over the seconds in ``time_keys`` they spent (so a slow iteration weighs by its length).
    None when no record in the window logged a rate."""
    timed = [(m["steps_per_s"], sum(float(m.get(k) or 0.0) for k in time_keys))
             for m in records[-window:] if m.get("steps_per_s")]
    spent = sum(seconds for _, seconds in timed)
    return sum(rate * seconds for rate, seconds in timed) / spent if spent > 0 else None
