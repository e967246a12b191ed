"""The README's results tables are copies of the published run JSON, not numbers typed by hand."""

from __future__ import annotations

import json

import pytest

from trashlib.report import replace_marked_block, results_markdown
from trashlib.workbook import PROJECT_ROOT

PUBLISHED = sorted((PROJECT_ROOT / "benchmarks" / "published").glob("*.json"))


@pytest.mark.parametrize("path", PUBLISHED, ids=[p.stem for p in PUBLISHED])
def test_readme_results_table_matches_the_published_json(path):
    doc = json.loads(path.read_text())
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert replace_marked_block(readme, doc["run"], results_markdown(doc)) == readme, \
        f"README's {doc['run']} table differs from {path.name}: rerun benchmarks/publish_results.py"
    assert (path.parent / f"{doc['run']}-pareto.png").is_file()
    assert any(row["candidate"] == doc["winner"] and row["deployable"] for row in doc["rows"])


def test_marked_block_replacement():
    text = "a\n<!-- results:x start -->\nold\n<!-- results:x end -->\nb"
    assert replace_marked_block(text, "x", "new") == "a\n<!-- results:x start -->\nnew\n<!-- results:x end -->\nb"
    with pytest.raises(ValueError, match="no <!-- results:y start -->"):
        replace_marked_block(text, "y", "new")
