"""The runner: profiles and parameters, staleness stamps, and papermill executing the numbered notebooks in order."""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import papermill
import traitlets
import yaml
from jupyter_client.manager import AsyncKernelManager

from trashlib import progress
from trashlib.files import atomic_write_bytes, atomic_write_text, sha256_file
from trashlib.pages import render_html, write_index
from trashlib.run import (
    LOCK_FILE,
    NOTEBOOK_OUTPUTS,
    PROJECT_ROOT,
    SYNTHETIC,
    NotebookResult,
    RunError,
    RunSummary,
    resolve_data,
    run_lock,
)

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
MAX_NAME = 100  # a run name becomes two folder names; file systems refuse names past 255 bytes
PROFILE_DIR = NOTEBOOK_DIR / "params"


class ParameterError(RunError):
    """A profile or parameter the workbook refuses before anything runs."""


# --------------------------------------------------------------------------- profiles and parameters


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def notebook_parameters(nb: Path) -> dict[str, Any]:
    """The literal defaults of a notebook's `parameters` cell."""
    doc = nbformat.read(nb, as_version=4)
    for cell in doc.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out: dict[str, Any] = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    out[node.targets[0].id] = ast.literal_eval(node.value)
            return out
    raise ParameterError(f"{nb.name} has no cell tagged 'parameters'")


def load_profile(name: str, profile_dir: Path = PROFILE_DIR) -> dict[str, Any]:
    """A profile's YAML: flat keys for every notebook, plus optional per-notebook sections."""
    path = profile_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profile_dir.glob("*.yaml"))
        raise ParameterError(f"unknown profile {name!r}: choose one of {known}")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ParameterError(f"profile {path}: must be a mapping of parameter names to values")
    return doc


def _check_type(key: str, value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif default is None:
        ok = True
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParameterError(
            f"parameter {key}={value!r} ({where}): expected {type(default).__name__} like the default {default!r}"
        )
    return value


# (low, high, low_open, high_open) for numeric parameters, applied to each item of a list parameter
_AT_LEAST_1 = (1, None, False, False)
_AT_LEAST_0 = (0, None, False, False)
_POSITIVE = (0, None, True, False)
_FRACTION = (0, 1, False, False)
_OPEN_FRACTION = (0, 1, True, True)
PARAMETER_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(
        (
            "epochs",
            "n_trials",
            "trial_epochs",
            "final_epochs",
            "finetune_epochs",
            "standin_epochs",
            "batch_size",
            "threads",
            "latency_runs",
            "compare_rounds",
            "calibration_images",
            "synthetic_images",
            "layers_max",
            "iterative_steps",
            "supernet_epochs",
            "recalibration_crops",
            "ofa_trials",
            "ofa_latency_runs",
            "latency_check_runs",
            "ofa_finetune_epochs",
            "ofa_min_depth",
            "thread_choices",
        ),
        _AT_LEAST_1,
    ),
    **dict.fromkeys(("supernet_crops", "supernet_random"), _AT_LEAST_0),
    "latency_check_n": (3, None, False, False),
    "ofa_expand_ratios": (1, 6, False, False),
    **dict.fromkeys(
        ("teacher_epochs", "top_n", "qat_epochs", "seed", "weight_decay", "margin", "qat_max_drop", "patience"),
        _AT_LEAST_0,
    ),
    **dict.fromkeys(
        (
            "lr",
            "teacher_lr",
            "finetune_lr",
            "supernet_lr",
            "ofa_finetune_lr",
            "target_ms",
            "distill_temperature",
            "min_speedup",
            "ofa_speedup",
            "max_error",
            "width_mults",
        ),
        _POSITIVE,
    ),
    **dict.fromkeys(("augment", "supernet_augment", "distill_alpha", "max_f1_drop", "f1_tie"), _FRACTION),
    **dict.fromkeys(("prune_ratios", "split_fractions"), _OPEN_FRACTION),
    "cache_side": (32, None, False, False),
    "ofa_pick_slack": (1, None, False, False),
    "energy": (0, 1, True, False),
    "label_smoothing": (0, 1, False, True),
}
_SIZES = ("image_size", "teacher_image_size", "image_sizes", "ofa_resolutions")


# string parameters with a fixed set of values (the runtimes are those of trashlib.quantize.LATENCY_RUNTIMES)
PARAMETER_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("ofa", "mnasnet"),
    "mnasnet_objective": ("multi", "reward"),
    "ofa_pick": ("score", "speedup"),
    "ofa_distill_from": ("largest", "teacher"),
    "runtime": ("onnxruntime-int8", "onnxruntime-fp32", "openvino-int8", "openvino-fp32", "torch-eager"),
}


def _check_choice(key: str, value: Any, where: str) -> None:
    if key in PARAMETER_CHOICES and value not in PARAMETER_CHOICES[key]:
        raise ParameterError(f"parameter {key}={value!r} ({where}): choose one of {list(PARAMETER_CHOICES[key])}")


def _check_range(key: str, value: Any, where: str) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:  # NaN compares false with every bound: refuse it (and inf) before any range check
        if isinstance(item, float) and not math.isfinite(item):
            raise ParameterError(f"parameter {key}={value!r} ({where}): {item!r} is not a finite number")
    if key in PARAMETER_RANGES:
        low, high, low_open, high_open = PARAMETER_RANGES[key]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ParameterError(f"parameter {key}={value!r} ({where}): {item!r} is not a number")
            below = low is not None and (item <= low if low_open else item < low)
            above = high is not None and (item >= high if high_open else item > high)
            if below or above:
                left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
                bounds = f"{left}{low}, {'inf' if high is None else high}{right}"
                raise ParameterError(f"parameter {key}={value!r} ({where}): {item!r} is outside {bounds}")
    if key in _SIZES:
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or item < 32 or item % 32:
                raise ParameterError(
                    f"parameter {key}={value!r} ({where}): {item!r} must be a multiple of 32, "
                    f"at least 32 (the models downsample by 32)"
                )


def resolve_parameters(
    profile: dict[str, Any], overrides: dict[str, Any], notebooks: list[Path]
) -> dict[str, dict[str, Any]]:
    """Per notebook, every parameter it declares: its default, or the profile's or an override's value,
    type-checked and range-checked."""
    declared = {nb.stem: notebook_parameters(nb) for nb in notebooks}
    all_names = set().union(*declared.values()) if declared else set()
    sections = {k: v for k, v in profile.items() if k in declared}
    flat = {k: v for k, v in profile.items() if k not in declared}
    for section, values in sections.items():
        if not isinstance(values, dict):
            raise ParameterError(f"profile section {section!r} must be a mapping")
        unknown = set(values) - set(declared[section])
        if unknown:
            raise ParameterError(f"profile section {section!r}: unknown parameter(s) {sorted(unknown)}")
    unknown = (set(flat) | set(overrides)) - all_names
    if unknown:
        guesses = {name: difflib.get_close_matches(name, sorted(all_names), n=1) for name in sorted(unknown)}
        if all(guesses.values()):  # a typo: name the parameter meant, not the whole list
            hint = ", ".join(f"{close[0]!r} for {name!r}" for name, close in guesses.items())
            raise ParameterError(f"unknown parameter(s) {sorted(unknown)}: did you mean {hint}?")
        raise ParameterError(
            f"unknown parameter(s) {sorted(unknown)}: no notebook declares them (known: {sorted(all_names)})"
        )
    out: dict[str, dict[str, Any]] = {}
    for stem, defaults in declared.items():
        merged = {k: v for k, v in flat.items() if k in defaults}
        merged.update(sections.get(stem, {}))
        merged.update({k: v for k, v in overrides.items() if k in defaults})
        out[stem] = {**defaults, **{k: _check_type(k, v, defaults[k], stem) for k, v in merged.items()}}
        for key, value in out[stem].items():
            _check_range(key, value, stem)
            _check_choice(key, value, stem)
    return out


def profile_parameters(
    profile: str, overrides: dict[str, Any] | None = None, notebook_dir: Path = NOTEBOOK_DIR
) -> dict[str, dict[str, Any]]:
    """Every parameter of every notebook under a profile (and ``overrides``), as the runner would pass them."""
    return resolve_parameters(
        load_profile(profile, notebook_dir / "params"), dict(overrides or {}), list_notebooks(notebook_dir)
    )


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the command line; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise ParameterError(f"-p {text!r}: expected NAME=VALUE")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ParameterError(f"-p {text!r}: value is not valid YAML ({exc})") from None


# --------------------------------------------------------------------------- runner


def notebook_digest(nb: Path) -> str:
    """sha256 over the notebook's cells (type, tags and source): what runs, not how an editor saved it, so a save
    that only touches metadata, outputs or formatting leaves it unchanged."""
    h = hashlib.sha256()
    for cell in nbformat.read(nb, as_version=4).cells:
        tags = sorted(cell.get("metadata", {}).get("tags", []))
        h.update(json.dumps([cell.cell_type, tags, cell.source]).encode())
    return h.hexdigest()


def _stamp(nb: Path, params: dict[str, Any], previous: str) -> str:
    h = hashlib.sha256(notebook_digest(nb).encode())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(previous.encode())
    return h.hexdigest()


def data_fingerprint(data: str) -> str:
    """What the input data looks like without reading it: every file's relative path, size and mtime
    (sha256 over the list), so an edited, added or removed source photo makes the run stale."""
    if data == SYNTHETIC:
        return SYNTHETIC
    given = Path(data)
    root = given.parent if given.is_file() else given  # annotations.json: its folder holds the photos too
    h = hashlib.sha256()
    try:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    except OSError as error:
        raise ParameterError(f"data={data!r}: cannot read {error.filename or root}: {error.strerror}") from None
    return h.hexdigest()


def _file_times(run_dir: Path) -> dict[str, int]:
    """mtime (ns) of every file in the run directory except the executed notebooks, stamps and params.yaml."""
    times = {}
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir).as_posix()
        if path.is_file() and not rel.startswith("notebooks/") and rel not in ("params.yaml", LOCK_FILE):
            times[rel] = path.stat().st_mtime_ns
    return times


def _outputs_since(run_dir: Path, before: dict[str, int], stem: str) -> dict[str, str]:
    """sha256 of every output of notebook ``stem``: every file under the paths it owns (``run.NOTEBOOK_OUTPUTS``,
    also those it found current and left alone, such as a reused crop cache) and every file it wrote, new since
    ``before`` (``_file_times``) or with a newer mtime."""
    owned = (*NOTEBOOK_OUTPUTS.get(stem[:2], ()), f"headlines/{stem}.json")
    return {
        rel: sha256_file(run_dir / rel)
        for rel, mtime in sorted(_file_times(run_dir).items())
        if before.get(rel) != mtime or any(rel == p or rel.startswith(f"{p}/") for p in owned)
    }


def _up_to_date(stamp_file: Path, stamp: str, run_dir: Path) -> tuple[bool, str]:
    """Whether a notebook's stamp matches and every output it recorded is still there, unchanged."""
    if not stamp_file.is_file():
        return False, "never ran"
    try:
        record = json.loads(stamp_file.read_text())
    except ValueError:
        return False, "unreadable stamp"
    if not isinstance(record, dict) or record.get("stamp") != stamp:
        return False, "parameters, notebook, data or an earlier notebook changed"
    for rel, digest in record.get("outputs", {}).items():
        path = run_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            return False, f"output {rel} is missing or changed"
    return True, ""


PUBLISHED: tuple[str, ...] = ("leaderboard.csv", "winner/model.onnx", "winner/model_card.json")


def publish_artifacts(run_dir: Path, report_dir: Path, *, current: bool = True) -> list[Path]:
    """Copy the leaderboard and the winning deployable model from the run directory into the report folder, when
    they are ``current`` (the leaderboard notebook ran or was up to date in this run); otherwise, and for a file
    the run no longer has, remove what an earlier run published, so no stale winner is shown."""
    copied = []
    for name in PUBLISHED:
        source, target = run_dir / name, report_dir / name
        if current and source.is_file():
            copied.append(atomic_write_bytes(target, source.read_bytes()))
        else:
            target.unlink(missing_ok=True)
    return copied


def _ipc_kernel_manager(prefix: Path) -> type[AsyncKernelManager]:
    """A kernel manager class whose kernels listen on IPC sockets named after ``prefix`` instead of TCP ports (the
    client that papermill creates from it also shuts its kernel down)."""

    class IpcKernelManager(AsyncKernelManager):
        @traitlets.default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        @traitlets.default("ip")
        def _ip_default(self) -> str:
            return str(prefix)

    return IpcKernelManager


def _execute(nb: Path, out_nb: Path, params: dict[str, Any], *, progress_file: Path, log: Callable[[str], Any]) -> None:
    """papermill on one notebook: its kernel reached over IPC sockets in a private temporary folder (no TCP port, so
    no unencrypted-transport warning), told to write progress lines (``trashlib.progress``) that are echoed here
    instead of drawing tqdm bars into the page."""
    previous = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = str(progress_file)  # the kernel inherits the runner's environment
    try:
        with (
            tempfile.TemporaryDirectory(prefix="trashlib-kernel-") as sockets,
            progress.Tail(progress_file, log, f"    {nb.stem}: "),
        ):
            papermill.execute_notebook(
                str(nb),
                str(out_nb),
                parameters=params,
                cwd=str(nb.parent),
                kernel_name="python3",
                progress_bar=False,
                log_output=False,
                kernel_manager_class=_ipc_kernel_manager(Path(sockets) / "kernel"),
            )
    finally:
        if previous is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = previous


def run_workbook(
    profile: str,
    data: str,
    name: str,
    *,
    overrides: dict[str, Any] | None = None,
    only: list[str] | None = None,
    force: bool = False,
    runs_root: Path | None = None,
    reports_root: Path | None = None,
    notebook_dir: Path = NOTEBOOK_DIR,
    log: Callable[[str], Any] = print,
) -> RunSummary:
    """Execute the numbered notebooks with papermill into runs/NAME and render reports/NAME.

    A notebook whose parameters, source and predecessors are unchanged since its last successful run
    is not run again (`force` reruns everything).
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ParameterError(f"run name {name!r}: use letters, digits, '-', '_' and '.' only")
    if len(name) > MAX_NAME:
        raise ParameterError(f"run name {name[:20]}... is {len(name)} characters long; use at most {MAX_NAME}")
    notebooks = list_notebooks(notebook_dir)
    if only:
        wanted = set(only)
        missing = wanted - {nb.stem[:2] for nb in notebooks} - {nb.stem for nb in notebooks}
        if missing:
            raise ParameterError(f"--notebooks: no notebook {sorted(missing)} in {notebook_dir}")
    per_nb = profile_parameters(profile, overrides, notebook_dir)
    data_arg = data if data == SYNTHETIC else str(resolve_data(data, Path(".")))
    runs_root = Path(runs_root or PROJECT_ROOT / "runs").resolve()
    reports_root = Path(reports_root or PROJECT_ROOT / "reports").resolve()
    run_dir, report_dir = runs_root / name, reports_root / name
    try:
        (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
        report_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(run_dir):
            return _run_locked(
                profile, data_arg, name, per_nb, notebooks,
                overrides=overrides, only=only, force=force, run_dir=run_dir, report_dir=report_dir, log=log,
            )  # fmt: skip
    except OSError as error:  # a read-only or full disk, a file where a folder should be: one line, no traceback
        raise ParameterError(f"cannot write to {error.filename or run_dir}: {error.strerror or error}") from None


def _run_locked(
    profile: str,
    data_arg: str,
    name: str,
    per_nb: dict[str, dict[str, Any]],
    notebooks: list[Path],
    *,
    overrides: dict[str, Any] | None,
    only: list[str] | None,
    force: bool,
    run_dir: Path,
    report_dir: Path,
    log: Callable[[str], Any],
) -> RunSummary:
    """The runner's loop over the notebooks, holding the run directory's lock."""
    atomic_write_text(
        run_dir / "params.yaml",
        yaml.safe_dump(
            {"profile": profile, "data": data_arg, "overrides": overrides or {}, "notebooks": per_nb}, sort_keys=True
        ),
    )

    summary = RunSummary(name, profile, data_arg, str(run_dir), str(report_dir))
    previous = data_fingerprint(data_arg)
    for i, nb in enumerate(notebooks, 1):
        out_nb = run_dir / "notebooks" / nb.name
        stamp_file = run_dir / "notebooks" / f".{nb.stem}.stamp"
        if only and nb.stem not in only and nb.stem[:2] not in only:
            previous = stamp_file.read_text() if stamp_file.is_file() else previous
            continue
        params = {**per_nb[nb.stem], "run_dir": str(run_dir), "data": data_arg}
        params = {k: v for k, v in params.items() if k in notebook_parameters(nb)}
        stamp = _stamp(nb, params, previous)
        html = report_dir / f"{nb.stem}.html"
        current, why = _up_to_date(stamp_file, stamp, run_dir)
        if not force and out_nb.is_file() and current:
            previous = stamp_file.read_text()
            log(f"[{i}/{len(notebooks)}] {nb.stem}: up to date, skipped")
            summary.results.append(NotebookResult(nb.stem, "up to date", 0.0, html.name))
            if not html.is_file():
                render_html(out_nb, html)
            continue
        log(f"[{i}/{len(notebooks)}] {nb.stem}: running ({'--force' if force else why}) ...")
        t0, before = time.perf_counter(), _file_times(run_dir)
        stamp_file.unlink(missing_ok=True)
        try:
            _execute(nb, out_nb, params, progress_file=run_dir / "notebooks" / ".progress", log=log)
        except Exception as exc:  # papermill wraps the cell's error; keep its first line
            seconds = time.perf_counter() - t0
            first = str(exc).strip().splitlines()
            msg = next((line for line in reversed(first) if line.strip()), type(exc).__name__)
            if out_nb.is_file():
                render_html(out_nb, html)
            summary.results.append(NotebookResult(nb.stem, "failed", seconds, html.name, msg[:300]))
            log(f"[{i}/{len(notebooks)}] {nb.stem}: FAILED after {seconds:.1f} s: {msg[:300]}")
            break
        seconds = time.perf_counter() - t0
        record = json.dumps({"stamp": stamp, "outputs": _outputs_since(run_dir, before, nb.stem)}, sort_keys=True)
        atomic_write_text(stamp_file, record)
        previous = record  # later notebooks are stale when this one's outputs change
        render_html(out_nb, html)
        summary.results.append(NotebookResult(nb.stem, "ran", seconds, html.name))
        log(f"[{i}/{len(notebooks)}] {nb.stem}: done in {seconds:.1f} s -> {html}")
    leaderboard_done = bool(notebooks) and any(
        r.notebook == notebooks[-1].stem and r.status != "failed" for r in summary.results
    )
    for artifact in publish_artifacts(run_dir, report_dir, current=summary.ok and leaderboard_done):
        log(f"published {artifact}")
    if not (summary.ok and leaderboard_done):
        log("nothing published: the leaderboard notebook did not complete in this run")
    shipped = run_dir / "headlines" / f"{notebooks[-1].stem}.json" if notebooks else None
    if leaderboard_done and shipped is not None and shipped.is_file():
        headline = json.loads(shipped.read_text())
        if "winner" in headline and headline["winner"] is None:
            log(f"NO WINNER: {headline.get('why_no_winner', 'no candidate qualifies')}; nothing was shipped")
    write_index(report_dir, summary, run_dir)
    log(f"report: {report_dir / 'index.html'}")
    return summary


def main_run(argv_profile: str, data: str, name: str, *, params: list[str], only: list[str] | None, force: bool) -> int:
    """The `run` command: one clear line on a bad parameter, non-zero exit when a notebook fails."""
    try:
        overrides = dict(parse_override(p) for p in params)
        summary = run_workbook(argv_profile, data, name, overrides=overrides, only=only, force=force)
    except RunError as exc:  # ParameterError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary.ok else 1
