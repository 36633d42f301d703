"""A non-editable `pip install .` ships the config tree and the base models: rlzoo-train works
outside the source tree, on a task whose base checkpoint comes from the installed package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pip_install_runs_outside_the_source_tree(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("rlzoo", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    shutil.rmtree(source)  # nothing may come from a source tree
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}

    where = subprocess.run([sys.executable, "-c", "import rlzoo, rlzoo.config as c; print(rlzoo.__file__); "
                            "print(c.CONF_DIR)"], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    assert sorted(p.name for p in (site / "rlzoo" / "conf").iterdir() if p.is_dir()) == \
        sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())  # every group shipped

    helped = subprocess.run([str(site / "bin" / "rlzoo-train"), "--help"], capture_output=True, text=True,
                            cwd=elsewhere, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "objective" in helped.stdout and "epg" in helped.stdout and "paper_a" in helped.stdout

    run = subprocess.run([str(site / "bin" / "rlzoo-train"), "task=toy2d", "debug=tiny", "run_dir=run"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "run" / "summary.json").exists()


def test_the_source_tree_reads_the_top_level_conf():
    """An editable install (and a checkout) reads conf/ at the top of the repository, the one
    config tree; nothing under rlzoo/ is a second copy."""
    from rlzoo.config import CONF_DIR

    assert CONF_DIR == REPO / "conf" and not (REPO / "rlzoo" / "conf").exists()


def test_the_package_list_names_every_package():
    """pyproject.toml lists the packages explicitly (conf/ is mapped to rlzoo.conf): a new
    subpackage missing from the list would be left out of a wheel."""
    import re

    block = re.search(r"^packages = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.S | re.M).group(1)
    listed = set(re.findall(r'"([^"]+)"', block))
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "rlzoo").rglob("__init__.py")}
    assert listed == on_disk | {"rlzoo.conf"}
