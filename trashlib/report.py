"""Figures and tables the notebooks show: data, training, search, compression and the candidates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.axes
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from optuna import Study
from optuna.trial import FrozenTrial

from trashlib.candidate import pareto_front
from trashlib.data import PreparedData
from trashlib.tune import pareto_trials, pick_score, trial_objectives

# --------------------------------------------------------------------------- EDA tables and figures


def manifest_frame(data: PreparedData) -> pd.DataFrame:
    """The manifest as a DataFrame with numeric columns and bbox size and aspect ratio."""
    if not data.rows:
        raise ValueError(f"{data.data_dir}: the prepared data set has no samples")
    df = pd.DataFrame(data.rows)
    for c in ("src_width", "src_height", "crop_x0", "crop_y0", "crop_x1", "crop_y1"):
        df[c] = pd.to_numeric(df[c])
    for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"):
        df[c] = pd.to_numeric(df[c].replace("", np.nan))
    w = df["bbox_w"].fillna(df["src_width"])
    h = df["bbox_h"].fillna(df["src_height"])
    df["box_side"] = np.sqrt(w * h)
    df["aspect"] = w / h
    return df


def class_count_table(data: PreparedData) -> pd.DataFrame:
    """Samples per class and split (train, val, test public, test private, total)."""
    counts = data.meta["counts"]
    table = pd.DataFrame({k: counts[k] for k in ("train", "val", "test/public", "test/private")})
    table["total"] = table.sum(axis=1)
    table.loc["all"] = table.sum()
    return table


def source_category_table(report: dict[str, Any], mapping_table: dict[str, str | None] | None) -> pd.DataFrame:
    """Source categories before the mapping, what each maps to, and how many were excluded."""
    rows = [
        {"category": c, "annotations": n, "maps to": (mapping_table or {}).get(c, c) or "excluded"}
        for c, n in sorted(report["source_category_counts"].items(), key=lambda kv: -kv[1])
    ]
    return pd.DataFrame(rows, columns=["category", "annotations", "maps to"])


def plot_distributions(df: pd.DataFrame) -> matplotlib.figure.Figure:
    """Class counts per split, box size and aspect ratio per class, source image sizes."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    sns.countplot(
        data=df,
        y="label",
        hue="split",
        hue_order=["train", "val", "test"],
        ax=axes[0, 0],
        order=sorted(df["label"].unique()),
    )
    axes[0, 0].set_title("samples per class and split")
    sns.boxplot(data=df, x="box_side", y="label", ax=axes[0, 1], order=sorted(df["label"].unique()))
    axes[0, 1].set_title("object size (sqrt of box area, px)")
    sns.histplot(
        data=df,
        x="aspect",
        hue="label",
        hue_order=sorted(df["label"].unique()),
        log_scale=True,
        element="step",
        ax=axes[1, 0],
    )
    axes[1, 0].set_title("box aspect ratio (w / h)")
    sizes = df.drop_duplicates("source")
    axes[1, 1].scatter(sizes["src_width"], sizes["src_height"], s=8, alpha=0.5)
    axes[1, 1].set(title="source image sizes", xlabel="width (px)", ylabel="height (px)")
    fig.tight_layout()
    return fig


def crop_grid(data: PreparedData, per_class: int = 8, seed: int = 0) -> matplotlib.figure.Figure:
    """A grid of sample crops, one row per class."""
    rng = np.random.default_rng(seed)
    classes = [c for c in data.classes if any(r["label"] == c for r in data.rows)]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 1.3, len(classes) * 1.4), squeeze=False)
    for i, cls in enumerate(classes):
        idx = [j for j, r in enumerate(data.rows) if r["label"] == cls]
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
        for k, ax in enumerate(axes[i]):
            ax.axis("off")
            if k < len(pick):
                ax.imshow(data.crops[pick[k]])
        axes[i, 0].set_title(cls, loc="left", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- training and evaluation figures


def plot_training(history: list[dict[str, Any]], title: str = "") -> matplotlib.figure.Figure:
    """Learning curves: train and val loss, and val macro-F1, per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title} loss".strip())
    ax_loss.legend()
    ax_f1.plot(epochs, [h["val_macro_f1"] for h in history], marker="o", color="C2")
    ax_f1.set(xlabel="epoch", ylabel="macro-F1", ylim=(0, 1), title=f"{title} validation macro-F1".strip())
    fig.tight_layout()
    return fig


def plot_confusion(metrics: dict[str, Any], class_names: list[str], title: str = "") -> matplotlib.figure.Figure:
    """Row-normalised confusion matrix with counts."""
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 0.9 * len(class_names) + 1.5))
    sns.heatmap(
        norm,
        annot=cm.astype(int),
        fmt="d",
        cmap="Blues",
        vmin=0,
        vmax=1,
        cbar=False,
        xticklabels=class_names,
        yticklabels=class_names,
        ax=ax,
    )
    ax.set(xlabel="predicted", ylabel="true", title=title or f"macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    return fig


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class."""
    return pd.DataFrame(metrics["per_class"]).T.round(3)


# --------------------------------------------------------------------------- search figures and tables


def trial_table(
    trials: list[FrozenTrial], f1_ref: float | None = None, latency_ref_ms: float | None = None
) -> pd.DataFrame:
    """One row per trial: state, val macro-F1, batch-1 latency, parameters, MACs, input size,
    whether it is on the Pareto front and, with references, its ``tune.pick_score``."""
    front = {t.number for t in pareto_trials(trials)}
    rows = []
    for t in trials:
        result, arch = t.user_attrs.get("result", {}), t.user_attrs.get("arch", {})
        f1, ms = trial_objectives(t) if t.state.name == "COMPLETE" else (np.nan, np.nan)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "val_f1": f1,
                "latency_ms": ms,
                "params": result.get("n_params"),
                "macs": result.get("macs"),
                "image_size": arch.get("image_size", t.params.get("image_size")),
                "pareto": t.number in front,
                "pick_score": (
                    pick_score(f1, ms, f1_ref, latency_ref_ms)
                    if t.number in front and f1_ref is not None and latency_ref_ms is not None
                    else np.nan
                ),
            }
        )
    columns = ["trial", "state", "val_f1", "latency_ms", "params", "macs", "image_size", "pareto", "pick_score"]
    return pd.DataFrame(rows, columns=columns).set_index("trial")


def plot_pareto(
    trials: list[FrozenTrial], baseline: dict[str, Any] | None = None, chosen: FrozenTrial | None = None
) -> matplotlib.figure.Figure:
    """Val macro-F1 against measured batch-1 latency for every completed trial, the Pareto front
    joined as a staircase, the chosen trial ringed, and the baseline (its TEST macro-F1 and
    latency, from notebook 01) as a star."""
    points = np.array([trial_objectives(t) for t in trials if t.state.name == "COMPLETE"]).reshape(-1, 2)
    front = sorted((trial_objectives(t)[1], trial_objectives(t)[0], t.number) for t in pareto_trials(trials))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(points[:, 1], points[:, 0], s=25, alpha=0.5, color="C0", label=f"trials ({len(points)})")
    if front:
        ax.plot(
            [p[0] for p in front],
            [p[1] for p in front],
            drawstyle="steps-post",
            marker="o",
            color="C1",
            label=f"Pareto front ({len(front)})",
        )
        for ms, f1, number in front:
            ax.annotate(f"#{number}", (ms, f1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if chosen is not None:
        f1, ms = trial_objectives(chosen)
        ax.scatter(
            [ms], [f1], s=220, facecolors="none", edgecolors="C3", linewidths=2, label=f"chosen: trial {chosen.number}"
        )
    if baseline is not None:
        ax.scatter(
            [baseline["latency_b1_ms"]],
            [baseline["f1_test"]],
            marker="*",
            s=250,
            color="k",
            label=f"baseline {baseline.get('model', 'model')}: TEST F1",
        )
    ax.set(
        xlabel="batch-1 latency (ms, measured)",
        ylabel="macro-F1 (trials: validation)",
        title="search: quality against latency",
    )
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_importances(importances: dict[str, dict[str, float]], top: int = 10) -> matplotlib.figure.Figure:
    """Horizontal bars of the ``top`` most important parameters, one panel per objective (as
    from ``tune.param_importances``)."""
    if not importances:
        raise ValueError("no importances to plot (too few completed trials?)")
    fig, axes = plt.subplots(1, len(importances), figsize=(5.5 * len(importances), 0.3 * top + 1.5), squeeze=False)
    for ax, (objective, values) in zip(axes[0], importances.items(), strict=True):
        items = sorted(values.items(), key=lambda kv: -kv[1])[:top][::-1]
        ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
        ax.set(xlabel="fANOVA importance", title=f"importance for {objective}", xlim=(0, 1))
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def plot_history(study: Study) -> matplotlib.figure.Figure:
    """Optimization history: every completed trial's value and the best so far, one panel per
    objective (val macro-F1 and latency, or the reward)."""
    names = ["val macro-F1", "batch-1 latency (ms)"] if len(study.directions) == 2 else ["reward"]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.5), squeeze=False)
    for index, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        numbers = [t.number for t in complete]
        values = np.array([t.values[index] for t in complete], dtype=float)
        best = (np.maximum if study.directions[index].name == "MAXIMIZE" else np.minimum).accumulate(values)
        ax.scatter(numbers, values, s=20, color="C0", label="trial")
        ax.plot(numbers, best, drawstyle="steps-post", color="C1", label="best so far")
        ax.set(xlabel="trial", ylabel=name, title=f"history: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- compression and leaderboard figures


def plot_layer_scan(scan: list[dict[str, Any]]) -> matplotlib.figure.Figure:
    """Measured speed-up of each decomposable layer alone (before / after factorizing), kept ones in colour."""
    rows = [s for s in scan if s["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows) + 2), 3.8))
    colors = ["C2" if s["keep"] else "C7" for s in rows]
    ax.bar(range(len(rows)), [s["speedup"] for s in rows], color=colors)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [f"{s['layer']} ({s['kind']})" for s in rows], rotation=90, fontsize=7)
    ax.set(ylabel="speed-up of the layer alone", title="decomposition scan: green = kept (smaller and faster)")
    fig.tight_layout()
    return fig


def label_points(ax: matplotlib.axes.Axes, points: Sequence[tuple[float, float, str]], fontsize: float = 7) -> None:
    """Write each point's name beside it: on the side that keeps it inside the axes, at the first of a few offsets
    where it overlaps no label placed before (estimated from the text's length), else at the least crowded one."""
    fig = ax.figure
    fig.canvas.draw()  # final limits and transforms
    box = ax.get_window_extent()
    scale = fig.dpi / 72  # points to pixels
    width_px = lambda text: len(text) * fontsize * 0.6 * scale  # noqa: E731
    height_px = fontsize * 1.3 * scale
    placed: list[tuple[float, float, float, float]] = []
    for px, py, name in points:
        x, y = ax.transData.transform((px, py))
        right = x + 6 * scale + width_px(name) < box.x1
        upper = y + 24 * scale + height_px < box.y1
        tries = [4, -12, 14, -22, 24, -32] if upper else [-12, -22, -32, 4]
        best: tuple[float, float, float] | None = None
        for dy in tries:
            dx = 5 if right else -5
            x0 = x + dx * scale if right else x + dx * scale - width_px(name)
            y0 = y + dy * scale
            rect = (x0, y0, x0 + width_px(name), y0 + height_px)
            overlaps = sum(not (rect[2] < r[0] or r[2] < rect[0] or rect[3] < r[1] or r[3] < rect[1]) for r in placed)
            inside = box.y0 <= rect[1] and rect[3] <= box.y1
            cost = overlaps * 2 + (0 if inside else 1)
            if best is None or cost < best[0]:
                best = (cost, dx, dy)
            if cost == 0:
                break
        assert best is not None
        _, dx_best, dy_best = best
        dx, dy = int(dx_best), int(dy_best)
        x0 = x + dx * scale if right else x + dx * scale - width_px(name)
        placed.append((x0, y + dy * scale, x0 + width_px(name), y + dy * scale + height_px))
        ax.annotate(
            name,
            (px, py),
            textcoords="offset points",
            xytext=(dx, dy),
            ha="left" if right else "right",
            fontsize=fontsize,
            annotation_clip=True,
        )


def plot_candidates(
    records: list[dict[str, Any]],
    x: str = "latency_b1_ms",
    y: str = "f1_test",
    title: str = "macro-F1 against batch-1 latency",
    *,
    labels: Sequence[str] | None = None,
) -> matplotlib.figure.Figure:
    """Every candidate as a point, the Pareto front (higher ``y``, lower ``x``) joined. Names are written only for
    the points on the front and for ``labels`` (the baseline, the winner), placed so they do not collide."""
    points = sorted((r[x], r[y], r["candidate"]) for r in records)
    table = pd.DataFrame(points, columns=[x, y, "candidate"]).set_index("candidate")
    where = {name: (px, py) for px, py, name in points}
    front_names = pareto_front(table, f1=y, latency=x)
    front = [where[name] for name in front_names]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0")
    ax.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        drawstyle="steps-post",
        color="C1",
        label=f"Pareto front ({len(front)})",
    )
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=title)
    ax.set_xscale("log")
    ax.margins(x=0.1, y=0.12)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    named = set(front_names) | {n for n in (labels or ()) if n in where}
    label_points(ax, [(px, py, name) for px, py, name in points if name in named])
    return fig


# --------------------------------------------------------------------------- once-for-all search


def plot_fronts(
    fronts: dict[str, list[tuple[float, float]]],
    landmarks: dict[str, tuple[float, float]],
    *,
    runtime: str,
    chosen: tuple[float, float] | None = None,
    budget_ms: float | None = None,
) -> matplotlib.figure.Figure:
    """Each search's points ``(latency_ms, f1)`` with its Pareto front joined, the ``landmarks`` (e.g. baseline and
    teacher, timed in the same runtime) as stars, the chosen point ringed, a latency budget as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index, (name, points) in enumerate(fronts.items()):
        if not points:
            continue
        arr = np.array(points, dtype=float).reshape(-1, 2)
        color = f"C{index}"
        ax.scatter(arr[:, 0], arr[:, 1], s=20, alpha=0.4, color=color, label=f"{name} ({len(arr)})")
        front, best = [], -np.inf
        for ms, f1 in sorted(points):
            if f1 > best:
                front.append((ms, f1))
                best = f1
        ax.plot(*zip(*front, strict=True), drawstyle="steps-post", marker="o", color=color, label=f"{name} front")
    for index, (name, (ms, f1)) in enumerate(landmarks.items()):
        ax.scatter([ms], [f1], marker="*", s=250, color=f"C{index + 4}", edgecolors="k", label=name)
    if chosen is not None:
        ax.scatter([chosen[0]], [chosen[1]], s=220, facecolors="none", edgecolors="C3", linewidths=2, label="chosen")
    if budget_ms is not None:
        ax.axvline(budget_ms, color="0.3", linestyle="--", lw=1, label=f"latency budget {budget_ms:.2f} ms")
    ax.set(xlabel=f"batch-1 latency (ms, {runtime})", ylabel="validation macro-F1", title="search fronts")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_channel_importances(importances: list[np.ndarray]) -> matplotlib.figure.Figure:
    """Each expanding block's channel importances (L1 of its projection weights), sorted and scaled to the first."""
    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("viridis")
    for index, scores in enumerate(importances):
        if len(scores) == 0:
            continue
        ax.plot(np.linspace(0, 1, len(scores)), scores / scores[0], color=cmap(index / len(importances)), lw=1)
    ax.set(
        xlabel="channel rank (fraction of the block's expansion)",
        ylabel="importance / most important",
        title="expansion channels by importance, one line per block (dark: early)",
    )
    fig.tight_layout()
    return fig


def plot_latency_check(
    quick_ms: list[float], careful_ms: list[float], tau: float, runtime: str
) -> matplotlib.figure.Figure:
    """Quick (search-time) against careful latency of the same sub-networks, with Kendall's tau."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(careful_ms, quick_ms, s=20)
    low, high = min(*quick_ms, *careful_ms), max(*quick_ms, *careful_ms)
    ax.plot([low, high], [low, high], color="grey", lw=1, ls="--")
    ax.set(
        xlabel=f"careful latency (ms, {runtime})",
        ylabel="quick latency (ms, as the search measures it)",
        title=f"{len(quick_ms)} random sub-networks: Kendall's tau {tau:.3f}",
    )
    fig.tight_layout()
    return fig
