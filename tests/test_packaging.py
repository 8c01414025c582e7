"""A non-editable install (wheel in a fresh venv) imports the same public names as the repo."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_in_a_fresh_venv_exposes_the_public_names(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("collapsewatch-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    # Reuse this environment's dependencies, but not its editable collapsewatch: a .pth line adds the
    # directory to sys.path without running the .pth files (the editable finder) inside it.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import collapsewatch, collapsewatch.hooks, collapsewatch.diagnostics, collapsewatch.dashboard, "
        "collapsewatch.trainer, collapsewatch.store.writer\n"
        "from collapsewatch import Recorder, attach, open_run, list_runs, RunError\n"
        "print(collapsewatch.__file__, collapsewatch.hooks.__file__)\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert str(env_dir) in out.stdout and str(ROOT) not in out.stdout
    cli = subprocess.run(
        [str(env_dir / "bin" / "collapsewatch"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert cli.returncode == 0 and "runs" in cli.stdout
