"""One candidate model's record: test macro-F1 (public/private), measured cost and scores, saved to the run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
import pandas as pd
from torch import nn

from trashlib.bench import profile_model
from trashlib.compress import max_output_difference
from trashlib.data import PreparedData
from trashlib.files import atomic_write_bytes, atomic_write_json, read_json
from trashlib.models import ModelError, ModelSpec, build_model, load_model, save_model, weights_sha256
from trashlib.predict import DEPLOY_RUNNERS
from trashlib.run import Run
from trashlib.score import classification_scores, score_candidate
from trashlib.train import TrainConfig, evaluate, seed_everything, train_model

STAGES: tuple[str, ...] = ("baseline", "search", "compress", "deploy")
NOTEBOOK_OF_STAGE = {"baseline": "01_baseline", "search": "02_search", "compress": "03_compress", "deploy": "04_deploy"}
# the notebooks that time candidates together, interleaved round by round, in the order they run (the last wins)
INTERLEAVED = (("03_compress", "compress"), ("04_deploy", "deploy"))
INTERLEAVED_FILE = "interleaved_latency.json"


class CandidateRecord(TypedDict, total=False):
    """What `metrics.json` holds about one candidate: quality on the test split, measured cost, scores, and for
    deployed models the runtime and its agreement with the fp32 source. ``stage`` is added when read back."""

    candidate: str
    stage: str
    model: str
    image_size: int
    f1_test: float
    f1_test_all_classes: float
    f1_public: float | None
    f1_private: float | None
    accuracy_test: float
    latency_b1_ms: float
    latency_b1_p90_ms: float
    throughput_b32_ips: float
    submit_s: float
    submit_n: int
    submit_loop_s: float
    submit_pipeline: str
    submit_f1_change: float
    macs: int
    params: int
    size_bytes: int | None
    score_published: float
    score_relative: float | None
    submit_agrees_with_cache: bool
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]]
    threads: int
    thread_b1_ms: dict[str, float]
    machine: dict[str, Any]
    weights_sha256: str
    reload_max_diff: float
    runtime: str
    source: str
    source_stage: str | None
    method: str
    pt2e_fallback_reason: str | None
    top1_agreement: float
    max_abs_diff: float
    flagged: str | None
    f1_change: float
    qat_epochs: int
    int8_float_stem: bool
    training: dict[str, Any]
    compression: dict[str, Any]
    search: dict[str, Any]


class Candidate(NamedTuple):
    """A candidate's model (eval mode), its spec, and its record (None for a stand-in that was never assessed)."""

    model: nn.Module
    spec: ModelSpec
    record: CandidateRecord | None


@dataclass(frozen=True)
class Winner:
    """The shipped candidate's name, the files copied to `winner/`, and the qualifying candidate the score ranks
    first (the same one unless ``f1_tie`` picked a faster one)."""

    candidate: str
    files: list[Path]
    ranked_first: str = ""


@dataclass(frozen=True)
class NoWinner:
    """Why nothing was shipped: no deployable candidate, or none that qualifies."""

    reason: str


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


def assess_candidate(
    label: str,
    model: nn.Module,
    spec: ModelSpec,
    data: PreparedData,
    *,
    threads: int = 2,
    baseline: CandidateRecord | None = None,
    latency_runs: int = 50,
) -> CandidateRecord:
    """Test-split quality and cost of one model, and its competition scores (published and relative)."""
    quality: dict[str, dict[str, Any] | None] = {}
    for key, subset in (("test", None), ("public", "public"), ("private", "private")):
        x, y = data.split("test", subset)
        quality[key] = (
            evaluate(model, x, y, data.classes, spec.image_size, normalization=spec.normalization) if len(y) else None
        )
    cost = profile_model(model, spec, data, threads=threads, runs=latency_runs)
    test = quality["test"]
    assert test is not None, "the test split is empty"
    f1, t = test["macro_f1"], cost["submit"]["seconds"]
    scores = score_candidate(
        f1, t, baseline["f1_test"] if baseline else None, baseline["submit_s"] if baseline else None
    )
    public, private = quality["public"], quality["private"]
    return CandidateRecord(
        candidate=label,
        model=spec.name,
        image_size=spec.image_size,
        f1_test=f1,
        f1_test_all_classes=test["macro_f1_all_classes"],
        f1_public=public["macro_f1"] if public is not None else None,
        f1_private=private["macro_f1"] if private is not None else None,
        accuracy_test=test["accuracy"],
        latency_b1_ms=cost["latency_b1"]["median_ms"],
        latency_b1_p90_ms=cost["latency_b1"]["p90_ms"],
        throughput_b32_ips=cost["throughput_b32"]["images_per_s"],
        submit_s=t,
        submit_n=cost["submit"]["n"],
        macs=cost["macs"],
        params=cost["params"],
        size_bytes=cost["size_bytes"],
        score_published=scores["score_published"],
        score_relative=scores["score_relative"],
        submit_agrees_with_cache=cost["submit_predictions"] == test["predictions"],
        per_class=test["per_class"],
        confusion_matrix=test["confusion_matrix"],
        threads=threads,
        machine=cost["machine"],
    )


def save_candidate(
    run: Run,
    stage: str,
    record: CandidateRecord,
    model: nn.Module,
    spec: ModelSpec,
    *,
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
    check_reload: bool = False,
) -> Path:
    """`<stage>/<candidate>/model.pt` (spec + weights) and `metrics.json` beside it. With ``check_reload`` the
    saved file is loaded back first and the largest output difference goes into the record (`reload_max_diff`)."""
    path = save_model(model, run.model_path(stage, record["candidate"]), spec)
    record["weights_sha256"] = weights_sha256(model)
    if check_reload:
        record["reload_max_diff"] = max_output_difference(model, load_model(path).model, spec.image_size)
    return run.write_metrics(f"{stage}/{record['candidate']}", {**record, **(extra or {})}, params)


def load_candidate(run: Run, stage: str, label: str) -> Candidate | None:
    """A saved candidate's model, spec and record, or None when it is not in the run directory. The weights must be
    the ones its record was measured on (``weights_sha256``): a replaced or corrupted model.pt is a ``ModelError``."""
    folder = run.run_dir / stage / label
    if not (folder / "model.pt").is_file() or not (folder / "metrics.json").is_file():
        return None
    model, spec = load_model(folder / "model.pt")
    record: CandidateRecord = read_json(folder / "metrics.json")["metrics"]
    recorded = record.get("weights_sha256")
    if recorded is not None and weights_sha256(model) != recorded:
        raise ModelError(
            f"{folder / 'model.pt'} holds other weights than the ones {folder / 'metrics.json'} was measured on; "
            f"rerun the notebook that made {stage}/{label}"
        )
    return Candidate(model, spec, record)


def finish_candidate(
    run: Run,
    stage: str,
    label: str,
    model: nn.Module,
    spec: ModelSpec,
    data: PreparedData,
    *,
    params: dict[str, Any],
    config: TrainConfig | None = None,
    teacher: nn.Module | None = None,
    baseline: CandidateRecord | None = None,
    threads: int = 2,
    latency_runs: int = 50,
    extra: dict[str, Any] | None = None,
) -> Candidate:
    """Fine-tune (distil when ``teacher``) a changed model, assess it, save it with its layer structure,
    reload it and record the largest output difference after reloading."""
    training = None
    if config is not None:
        result = train_model(
            model,
            data.split("train"),
            data.split("val"),
            config,
            teacher=teacher,
            checkpoint_path=run.path(stage, label, "checkpoint.pt"),
            restart_other_runs=True,
            progress=False,
        )
        model, training = result.model, result.to_dict()
    model.eval()
    spec = spec.with_structure(model)
    record = assess_candidate(label, model, spec, data, threads=threads, baseline=baseline, latency_runs=latency_runs)
    more = {**(extra or {}), **({"training": training} if training else {})}
    save_candidate(run, stage, record, model, spec, params=params, extra=more, check_reload=True)
    return Candidate(model, spec, record)


def baseline_or_standin(
    run: Run, data: PreparedData, *, epochs: int = 2, image_size: int = 64, seed: int = 0, threads: int = 2
) -> Candidate:
    """Notebook 01's baseline from the run directory, or (run alone) a small MnasNet 1.0 trained here,
    not saved, with no record; says which."""
    saved = load_candidate(run, "baseline", "baseline")
    if saved:
        return saved
    print(
        f"no baseline in {run.run_dir / 'baseline'} (notebook 01 not run): training a stand-in MnasNet 1.0 "
        f"at {image_size} px for {epochs} epochs, not saved"
    )
    spec = ModelSpec.create("mnasnet1_0", data.classes, image_size)
    seed_everything(seed)
    model = build_model(spec.name, spec.num_classes, image_size)
    config = TrainConfig.for_spec(spec, epochs=epochs, seed=seed, threads=threads, batch_size=32)
    result = train_model(model, data.split("train"), data.split("val"), config, progress=False)
    return Candidate(result.model.eval(), spec, None)


def list_candidates(run: Run, stages: Sequence[str] = STAGES) -> list[CandidateRecord]:
    """Every candidate record saved in the run directory (``<stage>/<label>/metrics.json``), with its stage."""
    records: list[CandidateRecord] = []
    for stage in stages:
        for path in sorted((run.run_dir / stage).glob("*/metrics.json")):
            metrics = read_json(path)["metrics"]
            if "f1_test" in metrics:
                records.append(CandidateRecord(**{"stage": stage, **metrics}))
    return records


def pick_for_deployment(
    records: Sequence[CandidateRecord], top_n: int, labels: Sequence[str] = (), *, always: Sequence[str] = ()
) -> list[CandidateRecord]:
    """The baseline, then ``labels`` ("stage/candidate") when given, else the ``top_n`` other candidates
    with the lowest published score (ties: faster first), then each of ``always`` that is in the run directory and
    not chosen yet (the searched model, so that the leaderboard sees it in the runtime that ships even when its
    eager-mode score is not among the best)."""
    by_key = {f"{r['stage']}/{r['candidate']}": r for r in records}
    missing = [key for key in labels if key not in by_key]
    if missing:
        raise ValueError(f"candidates {missing} are not in the run directory; there are {sorted(by_key)}")
    base = [r for r in records if r["stage"] == "baseline" and r["candidate"] == "baseline"]
    others = (
        [by_key[k] for k in labels]
        if labels
        else sorted((r for r in records if r not in base), key=lambda r: (r["score_published"], r["latency_b1_ms"]))[
            :top_n
        ]
    )
    others += [by_key[k] for k in always if k in by_key and by_key[k] not in others]
    return base + [r for r in others if r not in base]


def save_interleaved(run: Run, stage: str, b1_ms: dict[str, float]) -> Path:
    """``<stage>/interleaved_latency.json``: the batch-1 medians (ms) of the candidates a notebook timed together,
    by candidate name, for the leaderboard (``interleaved_latencies``)."""
    return atomic_write_json(run.path(stage, INTERLEAVED_FILE), {"b1_ms": {k: float(v) for k, v in b1_ms.items()}})


def interleaved_latencies(run: Run) -> dict[str, tuple[float, str]]:
    """Per candidate, its batch-1 latency (ms) from the last notebook that timed it interleaved with others, and
    that notebook's name."""
    out: dict[str, tuple[float, str]] = {}
    for notebook, stage in INTERLEAVED:
        path = run.run_dir / stage / INTERLEAVED_FILE
        if path.is_file():
            for name, ms in read_json(path)["b1_ms"].items():
                out[name] = (float(ms), notebook)
    return out


def leaderboard(
    records: Sequence[CandidateRecord],
    rank_by: str = "score_published",
    *,
    latencies: dict[str, tuple[float, str]] | None = None,
) -> pd.DataFrame:
    """One row per candidate, indexed by name, sorted by ``rank_by`` (then latency); ``runtime`` says how it
    runs ("eager-fp32" for saved torch models) and ``deployable`` marks the ONNX models with a model card.
    ``latencies`` (``interleaved_latencies``) replaces a candidate's ``latency_b1_ms`` by the interleaved measurement
    of the notebook that timed it last; ``latency_source`` names where each latency comes from and
    ``latency_b1_alone_ms`` keeps the one measured when the candidate was assessed alone."""
    if rank_by not in ("score_published", "score_relative"):
        raise ValueError(f"rank_by must be 'score_published' or 'score_relative', got {rank_by!r}")
    board = pd.DataFrame(records)
    if board.empty:
        raise ValueError("no candidate records to rank")
    if board[rank_by].isna().any():
        raise ValueError(
            f"{rank_by} is missing for {list(board.loc[board[rank_by].isna(), 'candidate'])} "
            "(no baseline in the run: rank by score_published)"
        )
    if board["candidate"].duplicated().any():
        raise ValueError(f"candidate names repeat: {sorted(board.loc[board['candidate'].duplicated(), 'candidate'])}")
    for column in ("runtime", "flagged"):
        if column not in board:
            board[column] = None
    board["runtime"] = board["runtime"].fillna("eager-fp32")
    board["deployable"] = board["runtime"].isin(DEPLOY_RUNNERS) & board["flagged"].isna()
    latencies = latencies or {}
    stages = board["stage"] if "stage" in board else pd.Series([""] * len(board))
    board["latency_b1_alone_ms"] = board["latency_b1_ms"]
    board["latency_source"] = [
        f"{latencies[name][1]} (interleaved)"
        if name in latencies
        else f"{NOTEBOOK_OF_STAGE.get(stage, stage)} (assessed alone)"
        for name, stage in zip(board["candidate"], stages, strict=True)
    ]
    board["latency_b1_ms"] = [
        latencies[name][0] if name in latencies else ms
        for name, ms in zip(board["candidate"], board["latency_b1_ms"], strict=True)
    ]
    return board.sort_values([rank_by, "latency_b1_ms"]).set_index("candidate")


def leaderboard_csv(board: pd.DataFrame) -> str:
    """The leaderboard as CSV, every dict or list cell (per-class scores, machine, training) written as JSON."""
    out = board.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = [
                json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else v
                for v in out[column]
            ]
    return out.to_csv()


def pareto_front(board: pd.DataFrame, f1: str = "f1_test", latency: str = "latency_b1_ms") -> list[str]:
    """The candidates no other beats on both test F1 (higher) and latency (lower), fastest first."""
    front: list[str] = []
    best = float("-inf")
    for name, row in board.sort_values([latency, f1], ascending=[True, False]).iterrows():
        if row[f1] > best:
            front.append(str(name))
            best = row[f1]
    return front


def chance_f1(data: PreparedData) -> float:
    """The macro-F1 a model that learned nothing gets on the test split: the larger of 1 / classes and the score of
    always answering the training split's most frequent class."""
    _, train_y = data.split("train")
    _, test_y = data.split("test")
    if not len(train_y) or not len(test_y):
        return 1 / len(data.classes)
    majority = int(np.bincount(train_y, minlength=len(data.classes)).argmax())
    constant = classification_scores(test_y, np.full(len(test_y), majority), data.classes)["macro_f1"]
    return max(1 / len(data.classes), constant)


def qualifying(board: pd.DataFrame, *, chance: float, baseline_f1: float | None, max_f1_drop: float) -> pd.Series:
    """Which candidates may ship: test macro-F1 above ``chance`` and at most ``max_f1_drop`` below the baseline's."""
    floor = chance if baseline_f1 is None else max(chance, baseline_f1 - max_f1_drop)
    return (board["f1_test"] > chance) & (board["f1_test"] >= floor)


def ship_winner(
    run: Run,
    board: pd.DataFrame,
    *,
    chance: float,
    baseline_f1: float | None,
    max_f1_drop: float,
    f1_tie: float = 0.0,
) -> Winner | NoWinner:
    """Copy the best-ranked deployable candidate that qualifies (``qualifying``) to ``winner/`` (its ONNX model and
    model card). With ``f1_tie`` > 0, every qualifying deployable candidate whose test macro-F1 is within ``f1_tie``
    of the best-ranked one's counts as equally accurate, and the fastest of them at batch 1 ships (ties: the better
    ranked): on a test split of a few hundred crops, a difference of one or two crops should not buy a slower model.
    When none qualifies, ``winner/`` is removed (no stale model stays there) and the reason returned."""
    if isinstance(f1_tie, bool) or not (isinstance(f1_tie, int | float) and 0 <= f1_tie <= 1):
        raise ValueError(f"f1_tie must be a number in [0, 1], got {f1_tie!r}")
    deployable = board[board["deployable"]]
    ok = deployable[qualifying(deployable, chance=chance, baseline_f1=baseline_f1, max_f1_drop=max_f1_drop)]
    if ok.empty:
        shutil.rmtree(run.run_dir / "winner", ignore_errors=True)
        best = f"; the best deployable scores {deployable['f1_test'].max():.3f}" if not deployable.empty else ""
        base = (
            f" and at least {baseline_f1 - max_f1_drop:.3f} (baseline {baseline_f1:.3f} - {max_f1_drop})"
            if (baseline_f1 is not None)
            else ""
        )
        why = (
            "no deployable (ONNX) candidate in the leaderboard: run notebook 04 first"
            if deployable.empty
            else f"no deployable candidate has test macro-F1 above chance {chance:.3f}{base}{best}"
        )
        return NoWinner(why)
    name = str(ok.index[0])
    if f1_tie:
        tied = ok[ok["f1_test"] >= float(ok["f1_test"].iloc[0]) - f1_tie]
        fastest = min(range(len(tied)), key=lambda i: (float(tied["latency_b1_ms"].iloc[i]), i))
        name = str(tied.index[fastest])
    files = []
    for file in ("model.onnx", "model_card.json"):
        source = run.run_dir / "deploy" / name / file
        files.append(atomic_write_bytes(run.path("winner", file), source.read_bytes()))
    return Winner(name, files, str(ok.index[0]))
