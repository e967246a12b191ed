"""Write a notebook from a compact cell list: `# %% [markdown]`, `# %% [parameters]` and `# %%` separators.

Usage: python tools/nbmake.py notebooks/src/00_eda.py notebooks/00_eda.ipynb
The .py sources are the editable form of the notebooks; the .ipynb files are what runs.
"""

import sys

import nbformat


def build(src: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    chunks = src.split("# %%")
    for chunk in chunks[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in header:
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(body)
            if "[parameters]" in header:
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        nbformat.write(build(fh.read()), sys.argv[2])
