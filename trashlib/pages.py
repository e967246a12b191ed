"""Offline HTML pages of a run: each executed notebook rendered for readers, and the run's index as a dashboard."""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import nbformat
import pandas as pd
from nbconvert import HTMLExporter

from trashlib import formats
from trashlib.files import atomic_write_text
from trashlib.run import LEADERBOARD_FILE, PARETO_FILE, PROJECT_ROOT, RunSummary, read_leaderboard

# nbconvert's lab template pulls require.js, MathJax and mermaid from CDNs; reports must read offline. Code cells are
# folded (a reader opens one with a click), every page links back to the run's index, and a wide table scrolls
# inside its box with its first column kept in view.
PAGE_CSS = """
.trashlib-nav{font-family:sans-serif;padding:.5em 1em;border-bottom:1px solid #ddd;margin-bottom:.5em}
details.trashlib-code>summary{cursor:pointer;color:#666;font-family:monospace;font-size:85%;padding:.1em 1em}
.jp-RenderedHTMLCommon table{display:block;max-width:100%;overflow-x:auto}
.jp-RenderedHTMLCommon tbody th,.jp-RenderedHTMLCommon thead th:first-child{position:sticky;left:0;background:#fff}
.jp-OutputArea-output{overflow-x:auto}
"""
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_css -%}{{ super() }}<style>PAGE_CSS</style>{%- endblock html_head_css -%}
{%- block body_header -%}{{ super() }}
<nav class="trashlib-nav"><a href="{{ resources.trashlib_index }}">&larr; run index</a></nav>
{%- endblock body_header -%}
{% block input_group -%}
<details class="trashlib-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
""".replace("PAGE_CSS", PAGE_CSS)

# a progress bar's refresh (tqdm: "37%|###7  | 10/27 [00:01<00:02, ...]") and carriage-return redraws
_PROGRESS_LINE = re.compile(r"\d+%\|.*\||\r")
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def clean_outputs(nb: nbformat.NotebookNode) -> int:
    """Remove what a reader should not see from an executed notebook, in place: stderr streams (library warnings,
    logger output), progress-bar widgets and redraws, and a bare ``PosixPath(...)`` echoed by a cell. Error outputs
    (tracebacks of a failed cell) stay. Returns how many outputs were removed or trimmed."""
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                changed += 1
                continue
            data = out.get("data", {})
            if _WIDGET_MIME in data or str(data.get("text/plain", "")).startswith(("PosixPath(", "WindowsPath(")):
                changed += 1
                continue
            if out.get("output_type") == "stream":
                lines = str(out.get("text", "")).splitlines(keepends=True)
                clean = [line for line in lines if not _PROGRESS_LINE.search(line.rstrip("\n"))]
                if len(clean) != len(lines):
                    changed += 1
                    if not clean:
                        continue
                    out["text"] = "".join(clean)
            kept.append(out)
        cell["outputs"] = kept
    return changed


def notebook_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The first markdown heading of a notebook (``03 · Compress: ...``), else ``fallback``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def render_html(notebook: str | Path, out_html: str | Path, *, index: str = "index.html") -> Path:
    """An executed notebook as a self-contained HTML page that loads nothing from the network: titled after its
    heading, code folded, no stderr or progress output (``clean_outputs``), a link back to ``index``."""
    nb = nbformat.read(str(notebook), as_version=4)
    clean_outputs(nb)
    nb.metadata["title"] = notebook_title(nb, Path(notebook).stem)
    exporter = HTMLExporter(
        template_name="lab", extra_loaders=[jinja2.DictLoader({"trashlib_offline.html.j2": OFFLINE_TEMPLATE})]
    )
    exporter.template_file = "trashlib_offline.html.j2"
    exporter.embed_images = True
    body, _ = exporter.from_notebook_node(nb, resources={"trashlib_index": index})
    return atomic_write_text(out_html, body)


# --------------------------------------------------------------------------- the index

INDEX_CSS = """body{font-family:sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
.box{overflow-x:auto;max-width:100%}.box td,.box th{white-space:nowrap}
.card{border:2px solid #2a7;border-radius:6px;padding:.6em 1.2em;
margin:1em 0;background:#f5fbf7}.card.none{border-color:#c00;background:#fdf2f2}
.card.none h2{color:#c00}.card h2{margin:.2em 0 .4em}
img{max-width:100%;height:auto}code,pre{background:#f4f4f4;padding:0 .2em}pre{padding:.5em;overflow-x:auto}
.muted{color:#666;font-size:90%}"""

LEADERBOARD_COLUMNS = (
    "stage",
    "runtime",
    "f1_test",
    "f1_public",
    "f1_private",
    "latency_b1_ms",
    "latency_source",
    "submit_s",
    "macs",
    "size_bytes",
    "score_published",
    "deployable",
)
TOP_ROWS = 8


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(frame: pd.DataFrame, index_name: str) -> str:
    """A formatted HTML table (``formats.column_format`` per column) in a box that scrolls sideways."""
    head = "".join(f"<th>{_e(c)}</th>" for c in [index_name, *frame.columns])
    rows = []
    formatters = {str(column): formats.column_format(str(column)) for column in frame.columns}
    for name, row in frame.iterrows():
        cells = []
        for column, value in row.items():
            text = formatters[str(column)](value)
            numeric = formatters[str(column)] is not formats.text
            cells.append(f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        rows.append(f"<tr><th>{_e(name)}</th>{''.join(cells)}</tr>")
    return f'<div class="box"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes" if dirty else "")


def cpu_description() -> str:
    """The CPU model (from /proc/cpuinfo, else the platform's word) and the number of usable cores."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model or platform.processor() or platform.machine() or 'unknown CPU'}, {cores} usable cores"


def _winner_card(board: pd.DataFrame | None, headline: dict[str, Any], report_dir: Path, name: str) -> str:
    if board is None:
        return (
            '<div class="card none"><h2>No leaderboard in this run</h2><p>Notebook 05 did not complete in this run, '
            "so nothing is published here.</p></div>"
        )
    winner = headline.get("winner")
    if not winner or winner not in board.index:
        why = headline.get("why_no_winner", "no candidate qualifies")
        return f'<div class="card none"><h2>No winner</h2><p>Why: {_e(why)}. Nothing was shipped.</p></div>'
    row = board.loc[winner]
    base = board.loc["baseline"] if "baseline" in board.index else None
    facts = [
        ("model and runtime", f"{row.get('model', '')} · {row.get('runtime', '')}"),
        (
            "test macro-F1",
            f"{formats.f1(row['f1_test'])} (public {formats.f1(row.get('f1_public'))}, "
            f"private {formats.f1(row.get('f1_private'))})",
        ),
        (
            "batch-1 latency",
            f"{formats.ms(row['latency_b1_ms'])}"
            + (f" (measured in {row['latency_source']})" if pd.notna(row.get("latency_source")) else ""),
        ),
        ("submit time (test split from disk)", formats.seconds(row.get("submit_s"))),
        ("score (published constants, lower is better)", formats.score(row.get("score_published"))),
        ("model size", formats.size_mb(row.get("size_bytes"))),
    ]
    if base is not None and winner != "baseline":
        facts.append(
            (
                "against the baseline",
                f"{formats.ratio(base['latency_b1_ms'] / row['latency_b1_ms'])} faster at batch 1, "
                f"{formats.ratio(base['submit_s'] / row['submit_s'])} faster submit, "
                f"F1 {row['f1_test'] - base['f1_test']:+.3f}",
            )
        )
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    use = ""
    if (report_dir / "winner" / "model.onnx").is_file():
        use = (
            "<h3>Use the model</h3><p>No torch needed: onnxruntime, numpy and Pillow.</p>"
            f"<pre>python -m trashlib predict reports/{_e(name)}/winner photos/ --out predictions.csv</pre>"
            '<p>Files: <a href="winner/model.onnx">winner/model.onnx</a>, '
            '<a href="winner/model_card.json">winner/model_card.json</a> (the preprocessing contract).</p>'
        )
    return f'<div class="card"><h2>Winner: {_e(winner)}</h2><table>{rows}</table>{use}</div>'


def _headline_text(numbers: dict[str, Any]) -> str:
    return "<br>".join(f"{_e(k)}: {_e(formats.column_format(str(k))(v))}" for k, v in numbers.items())


def write_index(report_dir: Path, summary: RunSummary, run_dir: Path) -> Path:
    """reports/RUN/index.html: the winner (or why none), the leaderboard's top rows, the Pareto figure, every
    notebook with its time, status and headline numbers, the run's facts, and how to use the model."""
    headlines: dict[str, dict[str, Any]] = {}
    for f in sorted((run_dir / "headlines").glob("*.json")):
        headlines[f.stem] = json.loads(f.read_text())
    published = report_dir / LEADERBOARD_FILE
    board = read_leaderboard(published) if published.is_file() else None
    last = summary.results[-1].notebook if summary.results else ""
    card = _winner_card(board, headlines.get(last, {}) if board is not None else {}, report_dir, summary.name)

    top = ""
    if board is not None:
        columns = [c for c in LEADERBOARD_COLUMNS if c in board.columns]
        top = (
            f"<h2>Leaderboard</h2><p class='muted'>The {min(TOP_ROWS, len(board))} best of {len(board)} candidates "
            f'by score; all of them in <a href="{LEADERBOARD_FILE}">{LEADERBOARD_FILE}</a>.</p>'
            + _table(board[columns].head(TOP_ROWS), "candidate")
        )
    figure = ""
    if board is not None and (run_dir / PARETO_FILE).is_file():
        encoded = base64.b64encode((run_dir / PARETO_FILE).read_bytes()).decode()
        figure = f'<h2>Test macro-F1 against latency</h2><img alt="Pareto front" src="data:image/png;base64,{encoded}">'

    rows = []
    for r in summary.results:
        link = f'<a href="{_e(r.html)}">{_e(r.notebook)}</a>' if r.html else _e(r.notebook)
        status = _e(r.status + (f": {r.error}" if r.error else ""))
        numbers = _headline_text(headlines.get(r.notebook, {}))
        rows.append(
            f'<tr><td>{link}</td><td>{status}</td><td class="n">{_e(formats.seconds(r.seconds))}</td>'
            f"<td>{numbers}</td></tr>"
        )
    total = sum(r.seconds for r in summary.results)
    manifest = run_dir / "data" / "dataset.json"
    manifest_sha = json.loads(manifest.read_text()).get("manifest_sha256") if manifest.is_file() else None
    facts = [
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("machine", cpu_description()),
        ("git commit", _git_commit()),
        ("profile", summary.profile),
        ("data", summary.data),
        ("data manifest sha256", manifest_sha or formats.MISSING),
        ("run directory", summary.run_dir),
    ]
    fact_rows = "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in facts)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>trashlib run {_e(summary.name)}</title><style>{INDEX_CSS}</style></head>
<body><h1>trashlib run <code>{_e(summary.name)}</code></h1>
<p>Status: {"all notebooks succeeded" if summary.ok else "<b>a notebook failed</b>: see its page below"};
{_e(formats.seconds(total))} of notebook time in this invocation.</p>
{card}{top}{figure}
<h2>Notebooks</h2><div class="box"><table><tr><th>notebook</th><th>status</th><th>time</th>
<th>headline numbers</th></tr>{"".join(rows)}</table></div>
<h2>Run facts</h2><div class="box"><table>{fact_rows}</table></div></body></html>
"""
    return atomic_write_text(report_dir / "index.html", page)
