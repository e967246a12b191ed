"""Figures for the notebooks and the offline HTML reports (executed notebooks and the run index)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trashlib.files import atomic_write_text

if TYPE_CHECKING:
    import matplotlib.figure
    import pandas as pd

    from trashlib.data import PreparedData
    from trashlib.workbook import RunSummary

# nbconvert's lab template pulls require.js, MathJax and mermaid from CDNs; reports must read offline.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def render_html(notebook: str | Path, out_html: str | Path) -> Path:
    """An executed notebook as a self-contained HTML page that loads nothing from the network."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[jinja2.DictLoader({"trashlib_offline.html.j2": OFFLINE_TEMPLATE})])
    exporter.template_file = "trashlib_offline.html.j2"
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return atomic_write_text(out_html, body)


def write_index(report_dir: Path, summary: RunSummary, run_dir: Path) -> Path:
    """reports/RUN/index.html: the run's data, profile, times, headline numbers and links."""
    headlines: dict[str, dict[str, Any]] = {}
    for f in sorted((run_dir / "headlines").glob("*.json")):
        headlines[f.stem] = json.loads(f.read_text())
    rows = []
    for r in summary.results:
        numbers = "<br>".join(f"{html.escape(str(k))}: {html.escape(_fmt(v))}"
                              for k, v in headlines.get(r.notebook, {}).items())
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.notebook)}</a>' if r.html else html.escape(r.notebook)
        status = html.escape(r.status + (f": {r.error}" if r.error else ""))
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{r.seconds:.1f}</td><td>{numbers}</td></tr>")
    total = sum(r.seconds for r in summary.results)
    files = [name for name in ("leaderboard.csv", "winner/model.onnx", "winner/model_card.json")
             if (report_dir / name).is_file()]
    downloads = ("<p>Files: " + ", ".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>' for n in files)
                 + "</p>") if files else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trashlib run {html.escape(summary.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em;vertical-align:top;text-align:left}}</style></head>
<body><h1>trashlib run <code>{html.escape(summary.name)}</code></h1>
<p>Profile <code>{html.escape(summary.profile)}</code> on data <code>{html.escape(summary.data)}</code>;
run directory <code>{html.escape(summary.run_dir)}</code>; {total:.1f} s of notebook time;
{'all notebooks succeeded' if summary.ok else '<b>a notebook failed</b>'}.</p>
<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>headline numbers</th></tr>
{''.join(rows)}
</table>{downloads}</body></html>
"""
    return atomic_write_text(report_dir / "index.html", page)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


# --------------------------------------------------------------------------- EDA tables and figures

def manifest_frame(data: PreparedData) -> pd.DataFrame:
    """The manifest as a DataFrame with numeric columns and bbox size and aspect ratio."""
    import pandas as pd

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
    import pandas as pd

    counts = data.meta["counts"]
    table = pd.DataFrame({k: counts[k] for k in ("train", "val", "test/public", "test/private")})
    table["total"] = table.sum(axis=1)
    table.loc["all"] = table.sum()
    return table


def source_category_table(report: dict[str, Any], mapping_table: dict[str, str | None] | None) -> pd.DataFrame:
    """Source categories before the mapping, what each maps to, and how many were excluded."""
    import pandas as pd

    rows = [{"category": c, "annotations": n,
             "maps to": (mapping_table or {}).get(c, c) or "excluded"}
            for c, n in sorted(report["source_category_counts"].items(), key=lambda kv: -kv[1])]
    return pd.DataFrame(rows, columns=["category", "annotations", "maps to"])


def plot_distributions(df: pd.DataFrame) -> matplotlib.figure.Figure:
    """Class counts per split, box size and aspect ratio per class, source image sizes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    sns.countplot(data=df, y="label", hue="split", hue_order=["train", "val", "test"], ax=axes[0, 0],
                  order=sorted(df["label"].unique()))
    axes[0, 0].set_title("samples per class and split")
    sns.boxplot(data=df, x="box_side", y="label", ax=axes[0, 1], order=sorted(df["label"].unique()))
    axes[0, 1].set_title("object size (sqrt of box area, px)")
    sns.histplot(data=df, x="aspect", hue="label", hue_order=sorted(df["label"].unique()), log_scale=True, element="step", ax=axes[1, 0])
    axes[1, 0].set_title("box aspect ratio (w / h)")
    sizes = df.drop_duplicates("source")
    axes[1, 1].scatter(sizes["src_width"], sizes["src_height"], s=8, alpha=0.5)
    axes[1, 1].set(title="source image sizes", xlabel="width (px)", ylabel="height (px)")
    fig.tight_layout()
    return fig


def crop_grid(data: PreparedData, per_class: int = 8, seed: int = 0) -> matplotlib.figure.Figure:
    """A grid of sample crops, one row per class."""
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 0.9 * len(class_names) + 1.5))
    sns.heatmap(norm, annot=cm.astype(int), fmt="d", cmap="Blues", vmin=0, vmax=1, cbar=False,
                xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"macro-F1 {metrics['macro_f1']:.3f}")
    fig.tight_layout()
    return fig


def per_class_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class."""
    import pandas as pd

    return pd.DataFrame(metrics["per_class"]).T.round(3)


# --------------------------------------------------------------------------- search figures and tables

def trial_table(trials: list[Any], f1_ref: float | None = None,
                latency_ref_ms: float | None = None) -> pd.DataFrame:
    """One row per trial: state, val macro-F1, batch-1 latency, parameters, MACs, input size,
    whether it is on the Pareto front and, with references, its ``tune.pick_score``."""
    import pandas as pd

    from trashlib.tune import pareto_trials, pick_score, trial_objectives

    front = {t.number for t in pareto_trials(trials)}
    rows = []
    for t in trials:
        result, arch = t.user_attrs.get("result", {}), t.user_attrs.get("arch", {})
        f1, ms = trial_objectives(t) if t.state.name == "COMPLETE" else (np.nan, np.nan)
        rows.append({"trial": t.number, "state": t.state.name, "val_f1": f1, "latency_ms": ms,
                     "params": result.get("n_params"), "macs": result.get("macs"),
                     "image_size": arch.get("image_size", t.params.get("image_size")),
                     "pareto": t.number in front,
                     "pick_score": (pick_score(f1, ms, f1_ref, latency_ref_ms)
                                    if t.number in front and f1_ref is not None
                                    and latency_ref_ms is not None else np.nan)})
    columns = ["trial", "state", "val_f1", "latency_ms", "params", "macs", "image_size", "pareto", "pick_score"]
    return pd.DataFrame(rows, columns=columns).set_index("trial")


def plot_pareto(trials: list[Any], baseline: dict[str, Any] | None = None,
                chosen: Any = None) -> matplotlib.figure.Figure:
    """Val macro-F1 against measured batch-1 latency for every completed trial, the Pareto front
    joined as a staircase, the chosen trial ringed, and the baseline (its TEST macro-F1 and
    latency, from notebook 01) as a star."""
    import matplotlib.pyplot as plt

    from trashlib.tune import pareto_trials, trial_objectives

    points = np.array([trial_objectives(t) for t in trials if t.state.name == "COMPLETE"]).reshape(-1, 2)
    front = sorted((trial_objectives(t)[1], trial_objectives(t)[0], t.number) for t in pareto_trials(trials))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(points[:, 1], points[:, 0], s=25, alpha=0.5, color="C0", label=f"trials ({len(points)})")
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post", marker="o",
                color="C1", label=f"Pareto front ({len(front)})")
        for ms, f1, number in front:
            ax.annotate(f"#{number}", (ms, f1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if chosen is not None:
        f1, ms = trial_objectives(chosen)
        ax.scatter([ms], [f1], s=220, facecolors="none", edgecolors="C3", linewidths=2,
                   label=f"chosen: trial {chosen.number}")
    if baseline is not None:
        ax.scatter([baseline["latency_b1_ms"]], [baseline["f1_test"]], marker="*", s=250, color="k",
                   label=f"baseline {baseline.get('model', 'model')}: TEST F1")
    ax.set(xlabel="batch-1 latency (ms, measured)", ylabel="macro-F1 (trials: validation)",
           title="search: quality against latency")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_importances(importances: dict[str, dict[str, float]], top: int = 10) -> matplotlib.figure.Figure:
    """Horizontal bars of the ``top`` most important parameters, one panel per objective (as
    from ``tune.param_importances``)."""
    import matplotlib.pyplot as plt

    if not importances:
        raise ValueError("no importances to plot (too few completed trials?)")
    fig, axes = plt.subplots(1, len(importances), figsize=(5.5 * len(importances), 0.3 * top + 1.5), squeeze=False)
    for ax, (objective, values) in zip(axes[0], importances.items()):
        items = sorted(values.items(), key=lambda kv: -kv[1])[:top][::-1]
        ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
        ax.set(xlabel="fANOVA importance", title=f"importance for {objective}", xlim=(0, 1))
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def plot_history(study: Any) -> matplotlib.figure.Figure:
    """Optimization history: every completed trial's value and the best so far, one panel per
    objective (val macro-F1 and latency, or the reward)."""
    import matplotlib.pyplot as plt

    names = ["val macro-F1", "batch-1 latency (ms)"] if len(study.directions) == 2 else ["reward"]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.5), squeeze=False)
    for index, (ax, name) in enumerate(zip(axes[0], names)):
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
    import matplotlib.pyplot as plt

    rows = [s for s in scan if s["speedup"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(rows) + 2), 3.8))
    colors = ["C2" if s["keep"] else "C7" for s in rows]
    ax.bar(range(len(rows)), [s["speedup"] for s in rows], color=colors)
    ax.axhline(1.0, color="k", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [f"{s['layer']} ({s['kind']})" for s in rows], rotation=90, fontsize=7)
    ax.set(ylabel="speed-up of the layer alone", title="decomposition scan: green = kept (smaller and faster)")
    fig.tight_layout()
    return fig


def plot_candidates(records: list[dict[str, Any]], x: str = "latency_b1_ms", y: str = "f1_test",
                    title: str = "macro-F1 against batch-1 latency") -> matplotlib.figure.Figure:
    """Every candidate as a labelled point, the Pareto front (higher ``y``, lower ``x``) joined."""
    import matplotlib.pyplot as plt

    import pandas as pd

    from trashlib.candidate import pareto_front

    points = sorted((r[x], r[y], r["candidate"]) for r in records)
    table = pd.DataFrame(points, columns=[x, y, "candidate"]).set_index("candidate")
    front = [(table.loc[name, x], table.loc[name, y]) for name in pareto_front(table, f1=y, latency=x)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0")
    for px, py, name in points:
        ax.annotate(name, (px, py), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.plot([p[0] for p in front], [p[1] for p in front], drawstyle="steps-post", color="C1",
            label=f"Pareto front ({len(front)})")
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "), title=title)
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- published results (README)

RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("candidate", "candidate", "{}"), ("runtime", "runtime", "{}"), ("f1_test", "F1 test", "{:.3f}"),
    ("f1_public", "F1 public", "{:.3f}"), ("f1_private", "F1 private", "{:.3f}"),
    ("latency_b1_ms", "b1 ms", "{:.2f}"), ("submit_s", "submit s", "{:.2f}"), ("params", "params", "{:,}"),
    ("macs", "MACs", "{:,}"), ("size_bytes", "size", "{}"), ("score_published", "score (published)", "{:.4f}"),
    ("score_relative", "score (relative)", "{:.4f}"),
)


SPREAD_KEYS = ("f1_test", "f1_public", "f1_private", "latency_b1_ms", "submit_s", "score_published", "score_relative")


def mean_over_runs(tables: list[list[dict[str, Any]]], rank_by: str = "score_published",
                   min_runs: int = 2) -> list[dict[str, Any]]:
    """One row per candidate present in at least ``min_runs`` of the leaderboards ``tables`` (one per seed):
    numbers averaged, the sample standard deviation as ``<key>_std`` for the ``SPREAD_KEYS``, and ``n_runs``;
    sorted by the mean of ``rank_by``."""
    if len(tables) < 2:
        raise ValueError(f"mean_over_runs needs at least 2 leaderboards, got {len(tables)}")
    if not 1 <= min_runs <= len(tables):
        raise ValueError(f"min_runs must be between 1 and {len(tables)}, got {min_runs}")
    by_name = [{row["candidate"]: row for row in table} for table in tables]
    names = list(dict.fromkeys(name for table in by_name for name in table))
    out = []
    for name in names:
        rows = [table[name] for table in by_name if name in table]
        if len(rows) < min_runs:
            continue
        merged: dict[str, Any] = {**rows[0], "n_runs": len(rows)}
        for key, value in rows[0].items():
            values = [r.get(key) for r in rows]
            if isinstance(value, bool) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  and np.isfinite(v) for v in values):
                continue
            merged[key] = float(np.mean(values))
            if key in SPREAD_KEYS and len(values) > 1:
                merged[f"{key}_std"] = float(np.std(values, ddof=1))
        merged["deployable"] = all(bool(r.get("deployable")) for r in rows)
        merged["flagged"] = any(bool(r.get("flagged")) for r in rows)
        out.append(merged)
    return sorted(out, key=lambda r: (r.get(rank_by) is None, r.get(rank_by) or 0.0))


def results_markdown(doc: dict[str, Any]) -> str:
    """The README table of one published run (``benchmarks/published/<name>.json``), rows in leaderboard order;
    a doc averaged over seeds (``seeds``, ``winners``) shows mean ± standard deviation."""
    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "-"
        if fmt == "{}" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"{value / 1e6:.1f} MB" if value >= 1e5 else str(round(value))
        if fmt == "{:,}" and isinstance(value, float):
            value = round(value)
        spread = row.get(f"{key}_std")
        return fmt.format(value) + (f" ± {fmt.format(spread)}" if spread is not None else "")

    columns = RESULT_COLUMNS + ((("n_runs", "seeds", "{}"),) if "seeds" in doc else ())
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(cell(row, key, fmt) for key, _, fmt in columns) + " |" for row in doc["rows"]]
    lines = [f"Data `{doc['data']}`, profile `{doc['profile']}`; winner **{doc['winner']}**. "
             f"Reproduce: `{doc['command']}`. Machine: {doc['machine']}; torch {doc['versions'].get('torch')}, "
             f"onnxruntime {doc['versions'].get('onnxruntime')}, torchao {doc['versions'].get('torchao')}."]
    times = [t for t in doc.get("notebook_seconds", []) if t]
    if times:
        per_run = "; ".join(f"{sum(t.values()) / 60:.1f} min (" + ", ".join(f"{k[:2]} {v:.0f} s" for k, v in t.items())
                            + ")" for t in times)
        lines.append(f"The workbook took {per_run} on that machine{' per seed' if len(times) > 1 else ''}, "
                     f"data preparation included (papermill's notebook durations).")
    if "seeds" in doc:
        winners = ", ".join(f"seed {seed}: {name}" for seed, name in zip(doc["seeds"], doc["winners"]))
        lines.append(f"Mean ± sample standard deviation over seeds {doc['seeds']}: each seed draws its own split "
                     f"by photo, initial weights and search, and deploys its own top candidates, so a row holds the "
                     f"seeds that made it (column `seeds`; rows made by fewer than 2 are left out). Rows are sorted "
                     f"by mean `{doc['rank_by']}`; the winner is the deployable row with the best mean among those "
                     f"made by at least 2 seeds. Each seed's own winner: {winners}.")
    return "\n".join([*lines, "", header, rule, *rows, *inference_markdown(doc.get("inference"))])


def inference_markdown(bench: dict[str, Any] | None) -> list[str]:
    """The inference benchmark's lines for the README (``benchmarks/bench_inference.py`` JSON), none without one."""
    if not bench:
        return []
    ort = next(r["b1_ms"] for r in bench["timing"] if r["variant"] == "baseline onnx-fp32")
    lines = ["", f"The winner against the references, timed interleaved in one process with {bench['threads']} "
                 f"threads (`{bench['command']}`). The floor is MACs over torch's GEMM rate measured on this CPU "
                 f"(`torch.mm` fp32, `torch._int_mm` int8): a reference, not a bound (onnxruntime's fp32 "
                 f"convolutions can beat it, below 1x).", "",
             "| variant | b1 ms | x eager fp32 | x onnxruntime fp32 | b32 ms | x eager fp32 (b32) | x its floor (b1) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['b1_ms']:.3f} | {r['speedup_b1']:.2f} | {ort / r['b1_ms']:.2f} | "
              f"{r['b32_ms']:.2f} | {r['speedup_b32']:.2f} | {r['x_floor_b1']:.2f} |" for r in bench["timing"]]
    submit = bench["submit"]
    lines += ["", f"Submit time, the whole test split from the files on disk ({submit['n']} images): the competition's "
                  f"loop (PIL decode and transform per image, batch 1, eager fp32 baseline) {submit['original_loop_s']:.2f} s, "
                  f"the winner {submit['winner_s']:.2f} s ({submit['ratio']:.1f}x shorter)."]
    return lines


def replace_marked_block(text: str, name: str, block: str) -> str:
    """``text`` with the lines between ``<!-- results:NAME start -->`` and ``<!-- results:NAME end -->`` replaced."""
    start, end = f"<!-- results:{name} start -->", f"<!-- results:{name} end -->"
    if start not in text or end not in text:
        raise ValueError(f"no {start} ... {end} block in the text")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block}\n{end}{tail}"
