"""Run directory: where every stage reads its inputs and writes its models, metrics and headline numbers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from trashlib.data import PrepareConfig, PreparedData, load_prepared, prepare_dataset
from trashlib.files import atomic_write_json, read_json
from trashlib.synthetic import make_synthetic_coco

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = "synthetic"
MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"
LEADERBOARD_FILE = "leaderboard.csv"
PARAMS_FILE = "params.yaml"
LOCK_FILE = ".lock"
PARETO_FILE = "pareto.png"  # notebook 05's figure of every candidate, embedded in the report index
# What each numbered notebook owns in the run directory (besides its headlines/NN_*.json): the runner records the
# sha256 of every file there, so a file edited or corrupted later makes that notebook stale.
NOTEBOOK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "00": ("data", "synthetic"),
    "01": ("baseline",),
    "02": ("search",),
    "03": ("compress",),
    "04": ("deploy",),
    "05": (LEADERBOARD_FILE, PARETO_FILE, "winner"),
}


class RunError(ValueError):
    """A path, parameter or input the run directory refuses; the message names it."""


@dataclass
class Run:
    """One run directory: every notebook reads its inputs from it and writes its outputs to it."""

    run_dir: Path

    def path(self, *parts: str) -> Path:
        """A path inside the run directory; its parent folder is created."""
        p = self.run_dir.joinpath(*parts)
        if not p.resolve().is_relative_to(self.run_dir.resolve()):
            raise RunError(f"path {'/'.join(parts)!r} leads out of the run directory {self.run_dir}")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def model_path(self, stage: str, candidate: str) -> Path:
        """`<stage>/<candidate>/model.pt`: a saved candidate's spec and weights."""
        return self.path(stage, candidate, MODEL_FILE)

    def metrics_path(self, stage: str, candidate: str | None = None) -> Path:
        """`<stage>/<candidate>/metrics.json`, or the stage's own `<stage>/metrics.json`."""
        return self.path(stage, *([candidate] if candidate else []), METRICS_FILE)

    def metrics(self, stage: str, candidate: str | None = None) -> dict[str, Any]:
        """The numbers of a `metrics.json` (without the parameters and versions stored beside them)."""
        path = self.metrics_path(stage, candidate)
        if not path.is_file():
            raise RunError(f"no {path.relative_to(self.run_dir)} in {self.run_dir}")
        return dict(read_json(path)["metrics"])

    def data(
        self,
        data: str = SYNTHETIC,
        config: PrepareConfig | None = None,
        *,
        synthetic_images: int = 200,
        progress: bool = True,
    ) -> PreparedData:
        """The run's prepared data: the cache in `data/` when current, else prepared from `data`."""
        config = config or PrepareConfig()
        source = resolve_data(data, self.run_dir, synthetic_images=synthetic_images, seed=config.seed)
        return prepare_dataset(source, self.run_dir / "data", config, progress=progress)

    def prepared(self, data: str = SYNTHETIC, *, synthetic_images: int = 200) -> PreparedData:
        """What notebook 00 prepared; when it is absent (a notebook run alone) a stand-in is prepared."""
        if (self.run_dir / "data" / "dataset.json").is_file():
            return load_prepared(self.run_dir / "data")
        print(f"no prepared data in {self.run_dir / 'data'}: preparing a stand-in from {data!r}")
        return self.data(data, synthetic_images=synthetic_images)

    def write_metrics(self, folder: str, metrics: dict[str, Any], params: dict[str, Any]) -> Path:
        """`<folder>/metrics.json`: the numbers with the parameters, data manifest and versions that made them."""
        manifest = self.run_dir / "data" / "dataset.json"
        doc = {
            "metrics": metrics,
            "params": params,
            "environment": environment(),
            "data_manifest_sha256": read_json(manifest).get("manifest_sha256") if manifest.is_file() else None,
        }
        return atomic_write_json(self.path(*folder.split("/"), METRICS_FILE), doc)

    def headline(self, notebook: str, numbers: dict[str, Any]) -> Path:
        """A few headline numbers for the report index."""
        return atomic_write_json(self.path("headlines", f"{notebook}.json"), numbers)

    def params(self) -> dict[str, Any]:
        """The resolved parameters of the whole run (`params.yaml`, written by the runner)."""
        path = self.run_dir / PARAMS_FILE
        if not path.is_file():
            raise RunError(f"no {PARAMS_FILE} in {self.run_dir}: the notebooks ran without the runner")
        return dict(yaml.safe_load(path.read_text()) or {})

    def notebook_params(self, notebook: str) -> dict[str, Any]:
        """The parameters one notebook ran with (`params.yaml`), e.g. ``run.notebook_params("01_baseline")``."""
        notebooks = self.params().get("notebooks", {})
        if notebook not in notebooks:
            raise RunError(f"{self.run_dir / PARAMS_FILE} has no parameters of notebook {notebook!r}")
        return dict(notebooks[notebook])

    def leaderboard(self) -> pd.DataFrame:
        """`leaderboard.csv` (notebook 05), indexed by candidate, with its columns' types restored."""
        path = self.run_dir / LEADERBOARD_FILE
        if not path.is_file():
            raise RunError(f"no {LEADERBOARD_FILE} in {self.run_dir}: run notebook 05 first")
        return read_leaderboard(path)


def read_leaderboard(path: Path) -> pd.DataFrame:
    """A `leaderboard.csv` as written by notebook 05, indexed by candidate; booleans and missing values restored."""
    board = pd.read_csv(path, index_col="candidate", keep_default_na=False, na_values=["", "nan", "None"])
    for column in ("deployable",):
        if column in board:
            board[column] = board[column].astype(str).str.lower().eq("true")
    return board


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold the run directory's lock for the block: `.lock` names the holder (pid and host). A second runner on the
    same directory gets a ``RunError`` at once; a lock left by a process that died is free again (the kernel drops
    it with the process) and is taken over."""
    path = Path(run_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = path.read_text(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunError(f"run directory {run_dir} is in use by {holder}; wait for it or choose another --name") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def open_run(run_dir: str | Path) -> Run:
    """The run directory at ``run_dir`` (created when missing)."""
    d = Path(run_dir).resolve()
    d.mkdir(parents=True, exist_ok=True)
    return Run(d)


def environment() -> dict[str, str]:
    """Package versions that a number depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "torch",
        "torchvision",
        "torchao",
        "torch-pruning",
        "tensorly",
        "onnx",
        "onnxruntime",
        "optuna",
        "numpy",
        "pillow",
        "scikit-learn",
        "trashlib",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def resolve_data(data: str, run_dir: Path, *, synthetic_images: int = 200, seed: int = 0) -> Path:
    """`synthetic` -> the generated default inside the run directory; anything else must be a path."""
    if data == SYNTHETIC:
        return make_synthetic_coco(Path(run_dir) / "synthetic", n_images=synthetic_images, seed=seed)
    p = Path(data).expanduser()
    if not p.exists():
        raise RunError(f"data={data!r}: no such file or folder (give a COCO folder, an ImageFolder or '{SYNTHETIC}')")
    resolved = p.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home():
        raise RunError(f"data={data!r} is {resolved}, not a data set: give the folder that holds the photos")
    return resolved


@dataclass
class NotebookResult:
    """How one notebook of a run went: ran, up to date or failed, in how many seconds, and its HTML page."""

    notebook: str
    status: str  # ran | up to date | failed
    seconds: float
    html: str = ""
    error: str = ""


@dataclass
class RunSummary:
    """What the runner did in one invocation: the run's name, profile, data, folders and each notebook's result."""

    name: str
    profile: str
    data: str
    run_dir: str
    report_dir: str
    results: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)
