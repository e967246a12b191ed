"""One candidate model's record: test macro-F1 (public/private), measured cost and scores, saved to the run."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import nn

from trashlib.bench import profile_model
from trashlib.data import PreparedData
from trashlib.files import read_json
from trashlib.models import describe_structure, load_model, save_model, weights_sha256
from trashlib.score import score_candidate
from trashlib.train import TrainConfig, evaluate, train_model
from trashlib.workbook import Run


def check_above_chance(what: str, f1: float, n_classes: int, data: str) -> str:
    """Whether a model learned anything: macro-F1 above chance (1 / classes), said in a line for the notebook.
    On the embedded synthetic data it must be (an ``AssertionError`` otherwise: that is a bug); on real data it
    may not be (a small set, a network trained from scratch for a few epochs), and the line is a warning."""
    chance = 1 / n_classes
    if f1 > chance:
        return f"{what}: macro-F1 {f1:.3f}, above chance {chance:.3f}"
    message = f"{what} macro-F1 {f1:.3f} is not above chance {chance:.3f}"
    if data == "synthetic":
        raise AssertionError(f"{message} on the synthetic data, which every model here learns")
    return f"WARNING: {message}: too little data, or too few epochs, for it on {data}"


def model_spec(name: str, data: PreparedData, image_size: int, normalization: dict[str, list[float]],
               **extra: Any) -> dict[str, Any]:
    """What rebuilds and feeds a model: architecture name, classes, input size and normalisation."""
    return {"name": name, "num_classes": len(data.classes), "class_names": list(data.classes),
            "image_size": image_size, "mean": list(normalization["mean"]), "std": list(normalization["std"]),
            **extra}


def assess_candidate(label: str, model: nn.Module, spec: dict[str, Any], data: PreparedData, threads: int = 2,
                     baseline: dict[str, Any] | None = None, latency_runs: int = 50) -> dict[str, Any]:
    """Test-split quality and cost of one model, and its competition scores (published and relative)."""
    size, norm = spec["image_size"], {"mean": spec["mean"], "std": spec["std"]}
    quality = {}
    for key, subset in (("test", None), ("public", "public"), ("private", "private")):
        x, y = data.split("test", subset)
        quality[key] = evaluate(model, x, y, data.classes, size, normalization=norm) if len(y) else None
    cost = profile_model(model, size, norm, data, threads=threads, runs=latency_runs)
    test = quality["test"]
    f1, t = test["macro_f1"], cost["submit"]["seconds"]
    scores = score_candidate(f1, t, baseline and baseline["f1_test"], baseline and baseline["submit_s"])
    return {
        "candidate": label, "model": spec["name"], "image_size": size,
        "f1_test": f1, "f1_public": quality["public"] and quality["public"]["macro_f1"],
        "f1_private": quality["private"] and quality["private"]["macro_f1"], "accuracy_test": test["accuracy"],
        "latency_b1_ms": cost["latency_b1"]["median_ms"], "latency_b1_p90_ms": cost["latency_b1"]["p90_ms"],
        "throughput_b32_ips": cost["throughput_b32"]["images_per_s"], "submit_s": t,
        "submit_n": cost["submit"]["n"], "macs": cost["macs"], "params": cost["params"],
        "size_bytes": cost["size_bytes"], **scores,
        "submit_agrees_with_cache": cost["submit_predictions"] == test["predictions"],
        "per_class": test["per_class"], "confusion_matrix": test["confusion_matrix"],
        "threads": threads, "machine": cost["machine"],
    }


def save_candidate(run: Run, stage: str, record: dict[str, Any], model: nn.Module, spec: dict[str, Any],
                   params: dict[str, Any], extra: dict[str, Any] | None = None, check_reload: bool = False) -> Path:
    """`<stage>/<candidate>/model.pt` (spec + weights) and `metrics.json` beside it. With ``check_reload`` the
    saved file is loaded back first and the largest output difference goes into the record (`reload_max_diff`)."""
    folder = f"{stage}/{record['candidate']}"
    path = save_model(model, run.path(folder, "model.pt"), spec)
    record["weights_sha256"] = weights_sha256(model)
    if check_reload:
        from trashlib.compress import max_output_difference

        record["reload_max_diff"] = max_output_difference(model, load_model(path)[0], spec["image_size"])
    return run.write_metrics(folder, {**record, **(extra or {})}, params)


def load_candidate(run: Run, stage: str, label: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]] | None:
    """A saved candidate's model, spec and metrics, or None when it is not in the run directory."""
    folder = run.run_dir / stage / label
    if not (folder / "model.pt").is_file() or not (folder / "metrics.json").is_file():
        return None
    model, spec = load_model(folder / "model.pt")
    return model, spec, read_json(folder / "metrics.json")["metrics"]


def finish_candidate(run: Run, stage: str, label: str, model: nn.Module, spec: dict[str, Any], data: PreparedData,
                     params: dict[str, Any], config: TrainConfig | None = None, teacher: nn.Module | None = None,
                     baseline: dict[str, Any] | None = None, threads: int = 2, latency_runs: int = 50,
                     extra: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune (distil when ``teacher``) a changed model, assess it, save it with its layer structure,
    reload it and record the largest output difference after reloading. Returns the model and its record."""
    training = None
    if config is not None:
        result = train_model(model, data.split("train"), data.split("val"), config, teacher=teacher,
                             checkpoint_path=run.path(stage, label, "checkpoint.pt"), restart_other_runs=True,
                             progress=False)
        model, training = result.model, result.to_dict()
    model.eval()
    spec = {**spec, "structure": describe_structure(model)}
    record = assess_candidate(label, model, spec, data, threads=threads, baseline=baseline,
                              latency_runs=latency_runs)
    more = {**(extra or {}), **({"training": training} if training else {})}
    save_candidate(run, stage, record, model, spec, params, more, check_reload=True)
    return model, record


def baseline_or_standin(run: Run, data: PreparedData, epochs: int = 2, image_size: int = 64, seed: int = 0,
                        threads: int = 2) -> tuple[nn.Module, dict[str, Any], dict[str, Any] | None]:
    """Notebook 01's baseline from the run directory, or (run alone) a small MnasNet 1.0 trained here,
    not saved, with no metrics record; says which."""
    saved = load_candidate(run, "baseline", "baseline")
    if saved:
        return saved
    from trashlib.models import build_model, model_preprocessing
    from trashlib.train import seed_everything

    print(f"no baseline in {run.run_dir / 'baseline'} (notebook 01 not run): training a stand-in MnasNet 1.0 "
          f"at {image_size} px for {epochs} epochs, not saved")
    norm = model_preprocessing("mnasnet1_0")
    seed_everything(seed)
    model = build_model("mnasnet1_0", len(data.classes), image_size)
    config = TrainConfig(epochs=epochs, image_size=image_size, mean=tuple(norm["mean"]), std=tuple(norm["std"]),
                         seed=seed, threads=threads, batch_size=32)
    result = train_model(model, data.split("train"), data.split("val"), config, progress=False)
    return result.model.eval(), model_spec("mnasnet1_0", data, image_size, norm), None


STAGES: tuple[str, ...] = ("baseline", "search", "compress", "deploy")


def list_candidates(run: Run, stages: Sequence[str] = STAGES) -> list[dict[str, Any]]:
    """Every candidate record saved in the run directory (``<stage>/<label>/metrics.json``), with its stage."""
    records = []
    for stage in stages:
        for path in sorted((run.run_dir / stage).glob("*/metrics.json")):
            metrics = read_json(path)["metrics"]
            if "f1_test" in metrics:
                records.append({"stage": stage, **metrics})
    return records


def pick_for_deployment(records: Sequence[dict[str, Any]], top_n: int,
                        labels: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The baseline, then ``labels`` ("stage/candidate") when given, else the ``top_n`` other candidates
    with the lowest published score (ties: faster first)."""
    by_key = {f"{r['stage']}/{r['candidate']}": r for r in records}
    missing = [key for key in labels if key not in by_key]
    if missing:
        raise ValueError(f"candidates {missing} are not in the run directory; there are {sorted(by_key)}")
    base = [r for r in records if r["stage"] == "baseline" and r["candidate"] == "baseline"]
    others = [by_key[k] for k in labels] if labels else sorted(
        (r for r in records if r not in base), key=lambda r: (r["score_published"], r["latency_b1_ms"]))[:top_n]
    return base + [r for r in others if r not in base]


def leaderboard(records: Sequence[dict[str, Any]], rank_by: str = "score_published") -> pd.DataFrame:
    """One row per candidate, indexed by name, sorted by ``rank_by`` (then latency); ``runtime`` says how it
    runs ("eager-fp32" for saved torch models) and ``deployable`` marks the ONNX models with a model card."""
    if rank_by not in ("score_published", "score_relative"):
        raise ValueError(f"rank_by must be 'score_published' or 'score_relative', got {rank_by!r}")
    board = pd.DataFrame(records)
    if board.empty:
        raise ValueError("no candidate records to rank")
    if board[rank_by].isna().any():
        raise ValueError(f"{rank_by} is missing for {list(board.loc[board[rank_by].isna(), 'candidate'])} "
                         "(no baseline in the run: rank by score_published)")
    if board["candidate"].duplicated().any():
        raise ValueError(f"candidate names repeat: {sorted(board.loc[board['candidate'].duplicated(), 'candidate'])}")
    for column in ("runtime", "flagged"):
        if column not in board:
            board[column] = None
    board["runtime"] = board["runtime"].fillna("eager-fp32")
    board["deployable"] = board["runtime"].str.startswith("onnx") & board["flagged"].isna()
    return board.sort_values([rank_by, "latency_b1_ms"]).set_index("candidate")


def pareto_front(board: pd.DataFrame, f1: str = "f1_test", latency: str = "latency_b1_ms") -> list[str]:
    """The candidates no other beats on both test F1 (higher) and latency (lower), fastest first."""
    front, best = [], float("-inf")
    for name, row in board.sort_values([latency, f1], ascending=[True, False]).iterrows():
        if row[f1] > best:
            front.append(name)
            best = row[f1]
    return front


def ship_winner(run: Run, board: pd.DataFrame) -> dict[str, Any]:
    """Copy the best-ranked deployable candidate's ONNX model and model card to ``winner/``."""
    from trashlib.files import atomic_write_bytes

    deployable = board[board["deployable"]]
    if deployable.empty:
        raise ValueError("no deployable (ONNX) candidate in the leaderboard: run notebook 04 first")
    name = deployable.index[0]
    files = []
    for file in ("model.onnx", "model_card.json"):
        source = run.run_dir / "deploy" / name / file
        files.append(atomic_write_bytes(run.path("winner", file), source.read_bytes()))
    return {"candidate": name, "files": files}
