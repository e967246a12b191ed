# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     codemirror_mode:
#       name: ipython
#       version: 3
#     file_extension: .py
#     mimetype: text/x-python
#     name: python
#     nbconvert_exporter: python
#     pygments_lexer: ipython3
#     version: 3.11.7
# ---

# %% [markdown]
# # 00 · Data: what the classifier will see
#
# Prepares the run's data set (COCO/TACO or ImageFolder, or the synthetic default): one square crop per
# object, mapped to the target classes, split by photo into train / val / test (public and private halves).
# Reads the source photos; writes `data/manifest.csv`, the crop cache `data/crops.npy` and `data/data_report.json`
# to the run directory, where every later notebook finds them.

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
mapping = "taco"
margin = 0.1
cache_side = 128
fit = "pad"  # "pad" keeps each crop's aspect ratio; "stretch" fills the square (whole-object photos)
split_fractions = [0.7, 0.15, 0.15]
seed = 0
synthetic_images = 200

# %%
import pandas as pd
from IPython.display import display

from trashlib import report
from trashlib.data import PrepareConfig, load_mapping
from trashlib.run import open_run

run = open_run(run_dir)
config = PrepareConfig(
    mapping=mapping, margin=margin, cache_side=cache_side, fit=fit, fractions=tuple(split_fractions), seed=seed
)
dataset = run.data(data, config, synthetic_images=synthetic_images, progress=False)
df = report.manifest_frame(dataset)
print(
    f"{dataset.meta['format']} data from {dataset.meta['source_root']}: {len(df)} crops "
    f"from {df['source'].nunique()} photos, classes {dataset.classes}"
)

# %% [markdown]
# ## Categories before and after the mapping
# For COCO data every source category maps to one target class or is excluded (with the reason kept in
# `data_manifest/`). ImageFolder classes are the folders themselves.

# %%
table = load_mapping(mapping).table if dataset.meta["format"] == "coco" else None
display(report.source_category_table(dataset.report, table))
excluded = dataset.report["excluded_category_counts"]
print(f"excluded: {sum(excluded.values())} annotations in {len(excluded)} categories")

# %% [markdown]
# ## Samples per class and split
# Splits are made by photo (all crops of a photo stay in one split), stratified by each photo's majority class.

# %%
counts = report.class_count_table(dataset)
display(counts)

# %% [markdown]
# ## Object sizes, aspect ratios and source image sizes

# %%
fig = report.plot_distributions(df)

# %% [markdown]
# ## Sample crops per class (as cached: padded to square, resized)

# %%
fig = report.crop_grid(dataset, per_class=8, seed=seed)

# %% [markdown]
# ## Data report: inputs skipped and warnings
# Bad inputs (missing or corrupt files, boxes outside the image, unknown categories, paths out of the data
# root...) are skipped and listed here; every valid sample is kept.

# %%
skipped = pd.DataFrame(dataset.report["skipped"], columns=["file", "field", "reason"])
display(skipped.head(50))
for w in dataset.report["warnings"][:20]:
    print("warning:", w)
print(
    f"{len(skipped)} skipped inputs, {len(dataset.report['warnings'])} warnings, "
    f"empty classes: {dataset.report['empty_classes'] or 'none'}"
)

# %% [markdown]
# ## Summary

# %%
photo_splits = df.groupby("source")["split"].nunique()
summary = {
    "crops": len(df),
    "photos": int(df["source"].nunique()),
    "classes": len(dataset.classes),
    "train": int((df["split"] == "train").sum()),
    "val": int((df["split"] == "val").sum()),
    "test": int((df["split"] == "test").sum()),
    "skipped": len(skipped),
}
run.headline("00_eda", summary)
display(pd.Series(summary, name="value").to_frame())
print("wrote", run.path("data", "manifest.csv"), run.path("data", "crops.npy"))

assert len(df) > 0, "no usable samples"
assert (photo_splits == 1).all(), "a photo's crops straddle splits"
assert {"train", "val", "test"} <= set(df["split"]), "a split is empty"
assert dataset.crops.shape[1:] == (cache_side, cache_side, 3)
assert run.path("data", "manifest.csv").is_file() and run.path("data", "data_report.json").is_file()
