"""Offline HTML pages of a run: each executed notebook rendered, and the run's index page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import jinja2
import nbformat
from nbconvert import HTMLExporter

from trashlib.files import atomic_write_text
from trashlib.run import RunSummary

# nbconvert's lab template pulls require.js, MathJax and mermaid from CDNs; reports must read offline.
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def render_html(notebook: str | Path, out_html: str | Path) -> Path:
    """An executed notebook as a self-contained HTML page that loads nothing from the network."""
    exporter = HTMLExporter(
        template_name="lab", extra_loaders=[jinja2.DictLoader({"trashlib_offline.html.j2": OFFLINE_TEMPLATE})]
    )
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
        numbers = "<br>".join(
            f"{html.escape(str(k))}: {html.escape(_fmt(v))}" for k, v in headlines.get(r.notebook, {}).items()
        )
        link = f'<a href="{html.escape(r.html)}">{html.escape(r.notebook)}</a>' if r.html else html.escape(r.notebook)
        status = html.escape(r.status + (f": {r.error}" if r.error else ""))
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{r.seconds:.1f}</td><td>{numbers}</td></tr>")
    total = sum(r.seconds for r in summary.results)
    files = [
        name
        for name in ("leaderboard.csv", "winner/model.onnx", "winner/model_card.json")
        if (report_dir / name).is_file()
    ]
    downloads = (
        ("<p>Files: " + ", ".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a>' for n in files) + "</p>")
        if files
        else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>trashlib run {html.escape(summary.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em;vertical-align:top;text-align:left}}</style></head>
<body><h1>trashlib run <code>{html.escape(summary.name)}</code></h1>
<p>Profile <code>{html.escape(summary.profile)}</code> on data <code>{html.escape(summary.data)}</code>;
run directory <code>{html.escape(summary.run_dir)}</code>; {total:.1f} s of notebook time;
{"all notebooks succeeded" if summary.ok else "<b>a notebook failed</b>"}.</p>
<table><tr><th>notebook</th><th>status</th><th>seconds</th><th>headline numbers</th></tr>
{"".join(rows)}
</table>{downloads}</body></html>
"""
    return atomic_write_text(report_dir / "index.html", page)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)
