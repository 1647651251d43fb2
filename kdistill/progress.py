"""The library's one progress convention; the library itself never draws.

Long-running functions take ``progress: Progress | None`` and call ``progress(description, completed, total)``
(``total`` None when unknown) as work advances, for every kind of work alike (data installs, expert collection,
distillation, benchmarks). Training loops report whole records through ``on_iteration`` / ``on_update`` /
``on_epoch`` instead. The CLI turns the calls into bars or lines on stderr (``kdistill.cli.options``).
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, "int | None"], None]
