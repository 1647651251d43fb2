"""docs/writing-a-domain.md stays true: its local-plugin example loads through KDISTILL_PLUGINS and works."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-domain.md"


def python_block_named(filename: str) -> str:
    """The guide's python code block whose first line is ``# <filename>``."""
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S):
        if block.splitlines()[0].strip() == f"# {filename}":
            return block
    raise AssertionError(f"{GUIDE} has no python block starting with '# {filename}'")


def test_the_guides_local_plugin_registers_a_working_domain(tmp_path):
    plugin = tmp_path / "heavy_poles.py"
    plugin.write_text(python_block_named("heavy_poles.py"))
    env = {**os.environ, "KDISTILL_PLUGINS": str(plugin)}
    env.pop("KDISTILL_DISABLE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "kdistill.cli", "domains", "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {row["name"]: row for row in json.loads(proc.stdout)["domains"]}
    assert rows["heavy-poles"]["plugin"] == "heavy_poles" and rows["heavy-poles"]["error"] is None
    assert rows["heavy-poles"]["splits"] == {"train": 32, "test": 16}
    assert "cartpole" in rows  # the installed domain is still there

    # the variant really has the heavier poles, and its contexts are scaled to its own ranges
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import heavy_poles; "
        "d = heavy_poles.HeavyPoles(); m = [d.params[t].pole_mass for t in d.tasks('all')]; "
        "c = np.stack([d.context(t).tokens[0] for t in d.tasks('all')]); "
        "assert min(m) >= 0.15 and max(m) <= 0.9 and np.abs(c).max() <= 1.0 + 1e-6; print('ok')"
    )
    check = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stderr


def test_the_guide_names_the_files_and_settings_that_exist():
    text = GUIDE.read_text()
    from kdistill_cartpole.domain import DEMO_DEFAULTS

    for path in re.findall(r"`(domains/cartpole/[\w/.]+)`", text):
        assert (ROOT / path).exists(), path
    assert f"{DEMO_DEFAULTS['teacher_steps']:,}" in text and f"{DEMO_DEFAULTS['samples_per_task']:,}" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'cartpole = "kdistill_cartpole.plugin"' in pyproject and 'cartpole = "kdistill_cartpole.plugin"' in text
