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
# # 03 · Compress: decomposition and structured pruning, recovered by distillation
#
# Decides whether making the trained networks smaller makes them faster here, and what it costs in macro-F1.
# Channels are removed physically (torch-pruning's dependency graph, across the MnasNet blocks and their
# depthwise groups), convolutions are factorized (Tucker-2 for k x k, SVD for 1 x 1, ranks by VBMF or an energy
# threshold) only where a per-layer timing shows it pays, and every variant is fine-tuned against a teacher.
# Reads the baseline (and the searched model and the EfficientNet-Lite0 teacher when present) from the run
# directory; writes `compress/<variant>/model.pt` (architecture spec + weights) and `metrics.json` for every
# variant, and `compress/layer_scan.json`.

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
sources = ["baseline", "searched"]  # models to compress, when in the run: "baseline", "searched", "teacher"
prune_ratios = [0.5]
importance = "magnitude"  # "magnitude" (L2), "taylor" (|w x grad| on a training batch) or "bn" (BatchNorm scale)
global_pruning = False
iterative_steps = 1
rank_rule = "vbmf"  # "vbmf" or "energy" (keep `energy` of each layer's spectrum)
energy = 0.9
min_speedup = 1.05  # a factorized layer is kept only when it is at least this much faster alone...
max_error = 0.5  # ...and changes the layer's output on a real crop by at most this (relative L2)
finetune_epochs = 3
finetune_lr = 0.001
distill_temperature = 4.0
distill_alpha = 0.5
teacher = "auto"  # "auto": notebook 01's EfficientNet-Lite0 when present, else the baseline; "baseline"; "none"
standin_epochs = 2  # a stand-in baseline's epochs when notebook 01 has not run
batch_size = 32
seed = 0
threads = 2
device = "cpu"  # "auto": train on CUDA when present (latency and submit times are always measured on the CPU)
latency_runs = 10
compare_rounds = 5

# %%
import pandas as pd
import torch
from IPython.display import display

from trashlib import formats, report
from trashlib.bench import compare_models, count_macs, count_params
from trashlib.candidate import (
    baseline_or_standin,
    check_above_chance,
    finish_candidate,
    load_candidate,
    save_interleaved,
)
from trashlib.compress import Variant, build_variants, kept_ranks, scan_decomposition
from trashlib.run import open_run
from trashlib.train import TrainConfig, preprocess, seed_everything

run = open_run(run_dir)
dataset = run.prepared(data)
params = dict(
    sources=sources,
    prune_ratios=prune_ratios,
    importance=importance,
    global_pruning=global_pruning,
    iterative_steps=iterative_steps,
    rank_rule=rank_rule,
    energy=energy,
    min_speedup=min_speedup,
    max_error=max_error,
    finetune_epochs=finetune_epochs,
    finetune_lr=finetune_lr,
    distill_temperature=distill_temperature,
    distill_alpha=distill_alpha,
    teacher=teacher,
    batch_size=batch_size,
    seed=seed,
    threads=threads,
    device=device,
)
base = baseline_or_standin(run, dataset, epochs=standin_epochs, seed=seed, threads=threads)
baseline = base.record
saved = {
    "baseline": base,
    "searched": load_candidate(run, "search", "searched"),
    "teacher": load_candidate(run, "baseline", "teacher"),
}
unknown = set(sources) - set(saved)
assert not unknown, f"sources: unknown {sorted(unknown)}; choose from {sorted(saved)}"
to_compress = {name: (saved[name].model, saved[name].spec) for name in ["baseline", *sources] if saved[name]}
saved_teacher = saved["teacher"] if teacher == "auto" else None
teacher_used = saved_teacher or (base if teacher != "none" else None)
teacher_model, teacher_spec = (teacher_used.model, teacher_used.spec) if teacher_used else (None, None)
teacher_said = (
    "none" if teacher_spec is None else "EfficientNet-Lite0 of notebook 01" if saved_teacher else "the baseline"
)
print(
    "sources:",
    ", ".join(f"{k} ({spec.name} at {spec.image_size} px)" for k, (_, spec) in to_compress.items()),
    "| teacher:",
    teacher_said,
)

# %% [markdown]
# ## Decomposition scan: which layers get faster when factorized?
# Each convolution of the baseline is fed its real input (from a training crop), timed alone at batch 1 with
# `threads` threads before and after factorizing at the rank the rule picks (the two interleaved), and the
# factorization's relative output error is measured. A layer is kept when it is smaller, at least `min_speedup`
# times faster and its error at most `max_error`. VBMF finds little low-rank structure in weights trained
# from scratch for a few epochs (their spectrum is nearly flat), so it picks tiny ranks with large errors there.
# MnasNet is built from depthwise
# k x k convolutions (left alone: Tucker-2 does not apply to them) and 1 x 1 convolutions (SVD: two thinner
# 1 x 1 convolutions, which pay only when the rank is well below the layer's width); the only full k x k
# convolution is the 3-channel stem.

# %%
seed_everything(seed)
size = base.spec.image_size
train_x, train_y = dataset.split("train")
calibration = (
    preprocess(train_x[:batch_size], size, base.spec.mean, base.spec.std),
    torch.as_tensor(train_y[:batch_size]).long(),
)
layer_scan = scan_decomposition(
    base.model,
    size,
    rule=rank_rule,
    energy=energy,
    min_speedup=min_speedup,
    threads=threads,
    rounds=compare_rounds,
    sample=calibration[0],
    max_error=max_error,
)
scan = [s.to_dict() for s in layer_scan]
scan_table = pd.DataFrame(scan).set_index("layer")
counts = scan_table["kind"].value_counts().to_dict()
kept = scan_table[scan_table["keep"]]
print(
    f"{len(scan_table)} convolutions: {counts}; kept {len(kept)} "
    f"(median speed-up of the kept layers alone {kept['speedup'].median() if len(kept) else float('nan'):.2f}x)"
)
fig = report.plot_layer_scan(scan)
display(scan_table[scan_table["speedup"].notna()].sort_values("speedup", ascending=False).head(12).round(3))

# %% [markdown]
# ## Build the variants
# Pruning at each ratio (importance `importance`; the final linear layer keeps its six outputs), the scan's kept
# factorizations, and both (pruned at the largest ratio, then the same layers factorized at ranks clipped to the
# pruned widths). Pruning physically removes channels: the parameter counts below fall before any training.
# `<source>-distilled` is the uncompressed source fine-tuned with the same recipe: the control that shows what
# compression costs apart from what the extra epochs of distillation gain.

# %%
variants = build_variants(
    to_compress,
    prune_ratios,
    decompose_ranks=kept_ranks(layer_scan),
    importance=importance,
    global_pruning=global_pruning,
    iterative_steps=iterative_steps,
    calibration=calibration,
)
display(
    pd.DataFrame(
        {
            label: {"source": v.info["source"], "technique": v.info["technique"], "params": count_params(v.model)}
            for label, v in variants.items()
        }
    ).T
)

# %% [markdown]
# ## Distil, assess and save every variant
# Each variant is fine-tuned for `finetune_epochs` epochs with `alpha * T^2 * KL(teacher || student) +
# (1 - alpha) * cross-entropy`, the teacher fed at its own size and normalisation; then assessed like the
# baseline (test macro-F1, latency, throughput, submit time from the files on disk, scores), saved with its
# layer structure, reloaded, and checked to give the same outputs.

# %%
records = {}
for label, (model, spec, info) in variants.items():
    config = TrainConfig.for_spec(
        spec,
        teacher=teacher_spec,
        epochs=finetune_epochs,
        lr=finetune_lr,
        batch_size=batch_size,
        augment=0.3,
        distill_temperature=distill_temperature,
        distill_alpha=distill_alpha,
        seed=seed,
        threads=threads,
        device=device,
    )
    finished = finish_candidate(
        run,
        "compress",
        label,
        model,
        spec,
        dataset,
        params=params,
        config=config,
        teacher=teacher_model,
        baseline=baseline,
        threads=threads,
        latency_runs=latency_runs,
        extra={"compression": info},
    )
    variants[label] = Variant(finished.model, finished.spec, info)
    records[label] = {**info, **finished.record}
scan_file = run.write_metrics("compress", {"layer_scan": scan}, params)

# %% [markdown]
# ## Speed against the uncompressed source, measured together
# Every variant and its source run in one process, interleaved round by round, at batch 1 and batch 32;
# the ratios are what to trust (absolute milliseconds vary up to 2x between processes on this machine).

# %%
speed = {}
for source, (model, spec) in to_compress.items():
    group = {
        source: (model, spec.image_size),
        **{k: (v.model, v.spec.image_size) for k, v in variants.items() if v.info["source"] == source},
    }
    for batch in (1, 32):
        for label, timing in compare_models(group, batch, threads, compare_rounds, 10 if batch == 1 else 2).items():
            speed.setdefault(label, {"source": source})[f"b{batch}_ms"] = timing["median_ms"]
            speed[label][f"speedup_b{batch}"] = 1 / timing["ratio_vs_first"]
save_interleaved(run, "compress", {label: timing["b1_ms"] for label, timing in speed.items()})

# %% [markdown]
# ## Summary
# Per variant against its source (`delta_f1` against the source as saved, `delta_f1_control` against the
# source fine-tuned with the same recipe): parameters, MACs, batch-1 and batch-32 latency (interleaved medians) and
# their speed-ups, test macro-F1 and its change, and the competition scores (published constants; relative to the
# baseline of notebook 01, empty for a stand-in). These batch-1 medians (`compress/interleaved_latency.json`) are
# the latencies the leaderboard shows, unless notebook 04 times a candidate again (its measurement then wins, and
# the leaderboard's `latency_source` says so).

# %%
source_f1 = {name: saved[name].record["f1_test"] if saved[name].record else None for name in to_compress}
table = pd.DataFrame(
    {
        label: {
            "technique": r["technique"],
            "params": r["params"],
            "macs": r["macs"],
            "b1_ms": speed[label]["b1_ms"],
            "speedup_b1": speed[label]["speedup_b1"],
            "b32_ms": speed[label]["b32_ms"],
            "speedup_b32": speed[label]["speedup_b32"],
            "f1_test": r["f1_test"],
            "delta_f1": (r["f1_test"] - source_f1[r["source"]] if source_f1[r["source"]] is not None else None),
            "delta_f1_control": r["f1_test"] - records[f"{r['source']}-distilled"]["f1_test"],
            "score_published": r["score_published"],
            "score_relative": r["score_relative"],
            "reload_max_diff": r["reload_max_diff"],
        }
        for label, r in records.items()
    }
).T
display(formats.format_table(table))
fig = report.plot_candidates(
    [
        {**r, "latency_b1_ms": speed[r["candidate"]]["b1_ms"]}
        for r in [*records.values(), *([baseline] if baseline else [])]
    ],
    title="compressed variants: test macro-F1 against batch-1 latency (interleaved)",
    labels=["baseline"],
)
best = min(records, key=lambda k: records[k]["score_published"])
run.headline(
    "03_compress",
    {
        "variants": len(records),
        "kept_factorizations": len(kept),
        "best": best,
        "best_f1": round(records[best]["f1_test"], 4),
        "best_latency_ms": round(speed[best]["b1_ms"], 3),
        **{f"{k}_speedup_b1": round(v["speedup_b1"], 2) for k, v in speed.items() if k in records},
    },
)
print(
    "wrote", *[run.path("compress", k, "model.pt") for k in records], run.path("compress", "metrics.json"), sep="\n  "
)

best_f1 = max(r["f1_test"] for r in records.values())
print(check_above_chance("the best compressed variant", best_f1, len(dataset.classes), data))
for label, r in records.items():
    source_model = to_compress[r["source"]][0]
    assert r["reload_max_diff"] < 1e-4, f"{label} gives other outputs after reloading: {r['reload_max_diff']}"
    assert r["submit_agrees_with_cache"], f"{label}: predictions from the files on disk differ from the cache"
    if r["technique"] == "none":
        continue
    assert r["macs"] < count_macs(source_model, r["image_size"]), f"{label} does not do less work than its source"
    if r["technique"] != "decompose":
        assert r["params"] < count_params(source_model), f"{label} is not smaller than its source"
    assert run.path("compress", label, "model.pt").is_file()
