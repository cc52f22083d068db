"""Running the project's MLflow entry points as a user does (``mlflow run``, offline)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def env(tracking_uri: str) -> dict[str, str]:
    """The environment of an ``mlflow run`` into ``tracking_uri`` with this checkout's code."""
    out = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "OMP_NUM_THREADS": "1",
    }
    out.pop("MLFLOW_RUN_ID", None)
    return out


def mlflow_run(entry: str, params: dict[str, object], environ: dict[str, str]) -> str:
    """``mlflow run . -e entry -P k=v ...`` (must succeed); the MLflow run id."""
    args = [f"-P{k}={v}" for k, v in params.items()]
    out = check(
        [
            *f"{sys.executable} -m mlflow run {ROOT} --env-manager local".split(),
            *f"--experiment-name pathgen -e {entry}".split(),
            *args,
        ],
        environ,
    )
    ids = re.findall(r"Run \(ID '([0-9a-f]{32})'\) succeeded", out)
    assert len(ids) == 1, out[-2000:]
    return ids[0]


def check(cmd: list[str], environ: dict[str, str]) -> str:
    """Run ``cmd`` from the repository root (must exit 0); its output."""
    res = subprocess.run(
        cmd, env=environ, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out
