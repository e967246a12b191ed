"""The smoke run's reports in headless Chromium at 1,280 px: offline, no errors, every link and image there, no stderr
or traceback on a completed notebook's page, no table wider than its box; screenshots saved in the run folder."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
from cdp import find_browser, headless

from trashlib.run import RunSummary
from trashlib.workbook import run_workbook

BROWSER = find_browser()
WIDTH = 1280
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BROWSER is None, reason="no Chromium on PATH (apt-get install chromium; .ci/run installs it as root)"
    ),
]

# what the test reads from each page once it has loaded
FACTS = """(() => {
  const vw = document.documentElement.clientWidth;
  const scrollBox = el => {
    for (let e = el; e && e !== document.body; e = e.parentElement) {
      const o = getComputedStyle(e).overflowX;
      if (o === 'auto' || o === 'scroll') return e;
    }
    return null;
  };
  const tables = [...document.querySelectorAll('table')].map(t => {
    const box = scrollBox(t) || t;
    const r = box.getBoundingClientRect(), p = box.parentElement.getBoundingClientRect();
    return {right: r.right, parentRight: p.right, text: t.innerText.slice(0, 60)};
  });
  return {
    height: document.documentElement.scrollHeight,
    scrollWidth: document.documentElement.scrollWidth,
    vw: vw,
    title: document.title,
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    images: [...document.images].map(i => ({src: i.src.slice(0, 80), ok: i.complete && i.naturalWidth > 0})),
    stderr: document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]').length,
    text: document.body.innerText,
    tables: tables,
  };
})()"""


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> RunSummary:
    root = tmp_path_factory.mktemp("browser")
    summary = run_workbook(  # 02 picks on a speed budget, re-timed carefully, as the real profile does
        "smoke",
        "synthetic",
        "browser",
        overrides={"ofa_pick": "speedup"},
        runs_root=root / "runs",
        reports_root=root / "reports",
        log=lambda line: None,
    )
    assert summary.ok, [r.error for r in summary.results]
    return summary


@pytest.fixture(scope="session")
def pages(smoke_run: RunSummary) -> dict[str, dict[str, Any]]:
    """Every page of the report visited once: its facts, console errors, requests and a full-page screenshot."""
    assert BROWSER is not None
    report_dir, shots = Path(smoke_run.report_dir), Path(smoke_run.run_dir) / "screenshots"
    shots.mkdir(exist_ok=True)
    visited: dict[str, dict[str, Any]] = {}
    with headless(BROWSER) as page:
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.call(f"{domain}.enable")
        for html in [report_dir / "index.html", *sorted(report_dir.glob("[0-9][0-9]_*.html"))]:
            page.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=800, deviceScaleFactor=1, mobile=False)
            page.events.clear()
            page.call("Page.navigate", url=html.as_uri())
            if not any(e["method"] == "Page.loadEventFired" for e in page.events):
                page.wait_for("Page.loadEventFired")
            facts = page.evaluate(FACTS)
            facts["errors"] = [
                e["params"]
                for e in page.events
                if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
                or e["method"] == "Runtime.exceptionThrown"
                or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
            ]
            facts["requests"] = [
                e["params"]["request"]["url"] for e in page.events if e["method"] == "Network.requestWillBeSent"
            ]
            height = facts["height"]
            shot = page.call(
                "Page.captureScreenshot",
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
            )
            (shots / f"{html.stem}.png").write_bytes(base64.b64decode(shot["data"]))
            visited[html.stem] = facts
    (shots / "heights.json").write_text(json.dumps({k: v["height"] for k, v in visited.items()}, indent=1) + "\n")
    return visited


def test_the_report_has_an_index_and_a_page_per_notebook(smoke_run: RunSummary, pages: dict[str, dict[str, Any]]):
    assert set(pages) == {"index", *(r.notebook for r in smoke_run.results)}
    assert pages["index"]["title"] == "trashlib run browser"
    assert all(pages[r.notebook]["title"].startswith(r.notebook[:2] + " ") for r in smoke_run.results)
    shots = Path(smoke_run.run_dir) / "screenshots"
    assert {p.stem for p in shots.glob("*.png")} == set(pages)
    assert all(p.stat().st_size > 1000 for p in shots.glob("*.png"))


def test_no_console_errors_and_nothing_loaded_from_the_network(pages: dict[str, dict[str, Any]]):
    for name, facts in pages.items():
        assert not facts["errors"], f"{name}: {facts['errors'][:3]}"
        foreign = [u for u in facts["requests"] if urlparse(u).scheme not in ("file", "data")]
        assert not foreign, f"{name} requested {foreign[:3]}"
        assert any(urlparse(u).scheme == "file" for u in facts["requests"]), f"{name}: the page itself not seen"


def test_every_index_link_resolves(smoke_run: RunSummary, pages: dict[str, dict[str, Any]]):
    report_dir = Path(smoke_run.report_dir)
    links = pages["index"]["links"]
    assert {f"{r.notebook}.html" for r in smoke_run.results} <= set(links)
    assert {"leaderboard.csv", "winner/model.onnx", "winner/model_card.json"} <= set(links)
    for href in links:
        parsed = urlparse(href)
        assert not parsed.scheme and not parsed.netloc, f"index links off the report folder: {href}"
        if parsed.path:
            assert (report_dir / unquote(parsed.path)).is_file(), f"index link {href} leads nowhere"
    for name, facts in pages.items():
        if name != "index":
            assert "index.html" in facts["links"], f"{name} has no link back to the index"


def test_completed_pages_have_no_stderr_or_traceback(smoke_run: RunSummary, pages: dict[str, dict[str, Any]]):
    for result in smoke_run.results:
        facts = pages[result.notebook]
        assert facts["stderr"] == 0, f"{result.notebook} shows a stderr block"
        for noise in ("Traceback", "Warning:", "it/s]", "%|"):
            assert noise not in facts["text"], f"{result.notebook} shows {noise!r}"


def test_no_table_wider_than_its_box_and_every_image_loads(pages: dict[str, dict[str, Any]]):
    for name, facts in pages.items():
        assert facts["scrollWidth"] <= facts["vw"], f"{name} scrolls sideways: {facts['scrollWidth']} px"
        for table in facts["tables"]:
            assert table["right"] <= min(table["parentRight"], facts["vw"]) + 1, f"{name}: table {table['text']!r}"
        assert all(image["ok"] for image in facts["images"]), f"{name}: {[i for i in facts['images'] if not i['ok']]}"
    assert pages["index"]["images"], "the index shows the Pareto figure"


def test_index_tells_the_runs_story(pages: dict[str, dict[str, Any]]):
    text = pages["index"]["text"]
    assert "Winner:" in text and "batch-1 latency" in text and "against the baseline" in text
    assert "python -m trashlib predict" in text and "Leaderboard" in text and "Run facts" in text
    assert "NaN" not in text and "None" not in text
    assert pages["index"]["height"] < 3000, "the index fits in about two screens"


def test_the_search_page_shows_the_careful_re_timing_of_the_speed_pick(
    smoke_run: RunSummary, pages: dict[str, dict[str, Any]]
):
    chosen = json.loads((Path(smoke_run.run_dir) / "search" / "ofa.json").read_text())["chosen"]
    careful = chosen["careful"]
    assert chosen["pick"] == "speedup" and careful["baseline_ms"] > 0 and careful["candidates"]
    assert chosen["trial"] in {row["trial"] for row in careful["candidates"]}
    for row in careful["candidates"]:
        assert row["speedup"] == pytest.approx(careful["baseline_ms"] / row["careful_ms"])
    search_page = next(name for name in pages if name.startswith("02"))
    assert "re-timed beside the baseline" in pages[search_page]["text"]
