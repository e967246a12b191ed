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
# # 04 · Deploy: int8, ONNX Runtime, OpenVINO, and one timing harness
#
# Decides how the robot should run the best models: eager PyTorch, `torch.compile`, PT2E int8 (torchao's x86
# quantizer, lowered to oneDNN int8 kernels), or one ONNX file at fp32 or static int8 (QDQ) in ONNX Runtime or in
# OpenVINO's CPU plugin. The leaderboard ships whichever passes the checks and scores best. The baseline and the best
# candidates of notebooks 01 to 03 are quantized, exported and timed together, and compared with the physical
# floor of this CPU. Reads every `metrics.json` and `model.pt` under `baseline/`, `search/` and `compress/`;
# writes `deploy/<candidate>-<runtime>/` (`model.onnx`, `model_card.json`, `metrics.json`) and
# `deploy/timing.json`.

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
top_n = 1  # candidates deployed besides the baseline: the lowest published scores
candidates = []  # or explicit "stage/candidate" names, e.g. ["compress/baseline-pruned50"]
always_deploy = ["search/searched"]  # deployed too when present, whatever their eager-mode score
calibration_images = 64
with_compile = False  # also time torch.compile (about a minute of compilation per model on 2 cores)
qat_epochs = 0  # > 0: an int8 model losing more than qat_max_drop test F1 is redone with quantization-aware training
qat_max_drop = 0.02
int8_float_stem = True  # ONNX int8 keeps the stem convolution (the one reading the image) in fp32
seed = 0
threads = 2
thread_choices = []  # two or more counts, e.g. [1, 2]: each ONNX variant runs at its fastest batch-1 count of these
latency_runs = 10
compare_rounds = 5
standin_epochs = 2

# %%
import pandas as pd
import torch
from IPython.display import display

from trashlib import formats, report
from trashlib.bench import machine_info, original_loop_submit_time, runtime_table
from trashlib.candidate import (
    assess_candidate,
    baseline_or_standin,
    list_candidates,
    load_candidate,
    pick_for_deployment,
    save_interleaved,
)
from trashlib.predict import DEPLOY_RUNNERS
from trashlib.quantize import deploy_candidate, read_model_card, runtime_kernels
from trashlib.run import open_run
from trashlib.train import seed_everything

run = open_run(run_dir)
dataset = run.prepared(data)
params = dict(
    top_n=top_n,
    candidates=candidates,
    always_deploy=always_deploy,
    calibration_images=calibration_images,
    with_compile=with_compile,
    qat_epochs=qat_epochs,
    qat_max_drop=qat_max_drop,
    seed=seed,
    threads=threads,
    thread_choices=thread_choices,
    latency_runs=latency_runs,
    compare_rounds=compare_rounds,
)
records = list_candidates(run, ("baseline", "search", "compress"))
if not any(r["candidate"] == "baseline" for r in records):
    standin = baseline_or_standin(run, dataset, epochs=standin_epochs, seed=seed, threads=threads)
    records.append(
        {
            "stage": "baseline",
            **assess_candidate(
                "baseline", standin.model, standin.spec, dataset, threads=threads, latency_runs=latency_runs
            ),
        }
    )
chosen = pick_for_deployment(records, top_n, candidates, always=always_deploy)
baseline = next(r for r in records if r["stage"] == "baseline" and r["candidate"] == "baseline")
display(
    pd.DataFrame(records)
    .set_index("candidate")[["stage", "model", "f1_test", "latency_b1_ms", "submit_s", "score_published"]]
    .sort_values("score_published")
    .round(4)
)
print("deploying:", ", ".join(f"{r['stage']}/{r['candidate']}" for r in chosen))

# %% [markdown]
# ## Quantize and export
# For each chosen candidate: PT2E post-training static int8 calibrated on `calibration_images` training crops
# (FX graph mode where `torch.export` fails), a single-file ONNX export checked by onnx's checker and against
# torch's logits, and ONNX Runtime static int8 (QDQ, per-channel weights); OpenVINO runs the same two files. Each
# runtime is assessed like every other candidate and checked against its fp32 source: top-1 agreement and the
# largest logit difference on validation crops. The submit time of an ONNX file is measured the way it ships:
# `trashlib predict` (photos decoded once, in threads, at reduced JPEG size, batched) in that runtime;
# `submit_loop_s` is the torch harness's loop over the same files and `submit_f1_change` what the reduced-size
# decoding costs in macro-F1. A runtime that fails is flagged and the candidate stays in the leaderboard as fp32. With
# `qat_epochs` > 0, a PT2E int8 model that loses more than `qat_max_drop` test macro-F1 is redone with
# quantization-aware training (fake-quantized fine-tuning; slow on CPU, so off by default). With two or more
# `thread_choices`, each ONNX variant is timed at batch 1 at each count, interleaved, and runs at the fastest: a
# small network's many small operators can run faster on one thread than on two, where waking the second thread
# costs more than it saves. The count is the record's `threads` and the card's `threads_b1`; the submit time
# (batches of 32) stays at `threads`.

# %%
seed_everything(seed)
deployed, sources, deploy_records = {}, {}, []
for source in chosen:
    model, spec, _ = load_candidate(run, source["stage"], source["candidate"]) or baseline_or_standin(
        run, dataset, epochs=standin_epochs, seed=seed, threads=threads
    )
    sources[source["candidate"]] = (model, spec, source)
    deployment = deploy_candidate(
        run,
        source["candidate"],
        model,
        spec,
        source,
        dataset,
        params=params,
        baseline=baseline,
        threads=threads,
        latency_runs=latency_runs,
        calibration_images=calibration_images,
        qat_epochs=qat_epochs,
        qat_max_drop=qat_max_drop,
        thread_choices=thread_choices,
        float_stem=int8_float_stem,
    )
    deployed[source["candidate"]] = deployment.models
    deploy_records += deployment.records
checks = pd.DataFrame(deploy_records).set_index("candidate")
display(
    formats.format_table(
        checks[
            [
                c
                for c in (
                    "runtime",
                    "method",
                    "top1_agreement",
                    "max_abs_diff",
                    "f1_test",
                    "f1_change",
                    "submit_s",
                    "submit_loop_s",
                    "submit_f1_change",
                    "size_bytes",
                    "flagged",
                )
                if c in checks
            ]
        ]
    )
)

# %% [markdown]
# ## One harness, every runtime
# All variants in one process, interleaved round by round, `threads` threads, at batch 1 and 32; the speed-ups
# are against the baseline in eager fp32 (the first row). The floor is the model's MACs over this CPU's peak
# multiply-add rate measured with a large GEMM (fp32 `torch.mm`; int8 `torch._int_mm`), so `x_floor_b1` says how
# far each variant is from what the arithmetic alone costs.

# %%
variants = {}
for label, (model, spec, source) in sources.items():
    size, macs = spec.image_size, source["macs"]
    variants[f"{label} eager-fp32"] = (model, size, macs, "fp32")
    if with_compile:
        variants[f"{label} compile-fp32"] = (torch.compile(model), size, macs, "fp32")
    for runtime, module in deployed[label].items():
        variants[f"{label} {runtime}"] = (module, size, macs, "int8" if runtime.endswith("int8") else "fp32")
timing = pd.DataFrame(runtime_table(variants, threads=threads, rounds=compare_rounds)).set_index("variant")
display(formats.format_table(timing))
# the leaderboard's latency of every candidate timed here: "<source> eager-fp32" is the source candidate itself
candidate_of = {
    **{f"{label} eager-fp32": label for label in sources},
    **{f"{r['source']} {r['runtime']}": r["candidate"] for r in deploy_records},
}
save_interleaved(run, "deploy", {candidate_of[v]: row["b1_ms"] for v, row in timing.iterrows() if v in candidate_of})
f1_of = {
    **{
        f"{label} {kind}-fp32": source["f1_test"]
        for label, (_, _, source) in sources.items()
        for kind in ("eager", "compile")
    },
    **{f"{r['source']} {r['runtime']}": r["f1_test"] for r in deploy_records if not r.get("flagged")},
}
fig = report.plot_candidates(
    [{"candidate": name, "f1_test": f1_of[name], "latency_b1_ms": row["b1_ms"]} for name, row in timing.iterrows()],
    title="deployed variants: test macro-F1 against batch-1 latency (interleaved)",
    labels=["baseline eager-fp32"],
)

# %% [markdown]
# ## Which kernels ran
# The same ONNX file runs on different kernels in each runtime. OpenVINO names the CPU primitive it chose per
# layer (`brgconv_avx512_amx_I8`: AMX int8 tiles; `..._vnni_...` or `avx512_core_vnni`: AVX-512 VNNI; `_f32`: float).
# ONNX Runtime does not name an instruction set: its MLAS library picks VNNI or AMX int8 kernels from the CPU flags
# below, so its column lists the node types it runs after graph optimisation (`QLinearConv` is int8 arithmetic,
# `nchwc.Conv` its blocked fp32 convolution).

# %%
cpu = machine_info()
print(f"CPU: {cpu['cpu_model']}; int8/bf16 features: {', '.join(cpu['cpu_int8_flags']) or 'none found'}")
kernels = runtime_kernels(run, "baseline", threads=threads)
display(
    pd.DataFrame(
        [
            {"runtime": rt, "kernel or node type": k, "count": n}
            for rt, found in kernels.items()
            for k, n in found.items()
        ]
    ).set_index(["runtime", "kernel or node type"])
)

# %% [markdown]
# ## Against the competition's own inference loop
# The original loop decoded each image with PIL, transformed it alone (Resize, ToTensor, Normalize) and ran the
# model at batch 1, eager fp32. Here it runs the baseline on the whole test split, next to the submit time of the
# fastest deployed variant through the shipped path (`predict`: the same photos decoded from disk once, in threads,
# at reduced JPEG size, batched, in the variant's runtime).

# %%
base_model, base_spec, base_record = sources["baseline"]
original = original_loop_submit_time(base_model, base_spec, dataset, threads=threads)
ok = [r for r in deploy_records if not r.get("flagged")]
fastest = min(ok, key=lambda r: r["submit_s"])
print(
    f"original loop: {original['seconds']:.2f} s for {original['n']} images; fastest deployed "
    f"{fastest['candidate']}: {fastest['submit_s']:.2f} s ({original['seconds'] / fastest['submit_s']:.1f}x shorter; "
    f"{fastest.get('submit_pipeline', 'torch harness')})"
)

# %% [markdown]
# ## Summary

# %%
summary = {
    "timing": timing.reset_index().to_dict("records"),
    "original_loop_s": original["seconds"],
    "original_loop_n": original["n"],
    "fastest_submit": fastest["candidate"],
    "fastest_submit_s": fastest["submit_s"],
    "kernels": kernels,
    "cpu_int8_flags": cpu["cpu_int8_flags"],
}
run.write_metrics("deploy", summary, params)
columns = [
    "runtime",
    "f1_test",
    "f1_change",
    "top1_agreement",
    "latency_b1_ms",
    "threads",
    "submit_s",
    "submit_f1_change",
    "size_bytes",
    "score_published",
    "flagged",
]
display(formats.format_table(checks[[c for c in columns if c in checks]]))
best = min(ok, key=lambda r: r["score_published"])
run.headline(
    "04_deploy",
    {
        "deployed": len(ok),
        "flagged": len(deploy_records) - len(ok),
        "best": best["candidate"],
        "best_f1": round(best["f1_test"], 4),
        "best_latency_ms": round(best["latency_b1_ms"], 3),
        "original_loop_s": round(original["seconds"], 3),
        "fastest_submit_s": round(fastest["submit_s"], 3),
        "submit_x_shorter": round(original["seconds"] / fastest["submit_s"], 2),
    },
)

for r in ok:
    folder = run.path("deploy", r["candidate"], "metrics.json").parent
    assert r["top1_agreement"] > 0.5, f"{r['candidate']} disagrees with its fp32 source on most crops"
    if r["runtime"] in ("onnx-fp32", "openvino-fp32"):
        assert r["max_abs_diff"] < 1e-3, f"{r['candidate']}: ONNX fp32 differs from torch by {r['max_abs_diff']}"
    if r["runtime"] in DEPLOY_RUNNERS:
        assert r["submit_n"] == len(dataset.split("test")[1]), f"{r['candidate']}: predict lost test objects"
        assert r["submit_pipeline"].startswith("predict"), r["submit_pipeline"]
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model.onnx", "model_card.json"], (
            f"{folder} holds more than one model file (external data?)"
        )
        assert read_model_card(folder / "model.onnx")["class_names"] == list(dataset.classes)
assert original["n"] == len(dataset.split("test")[1]) == fastest["submit_n"]
assert all(row["b1_ms"] > 0 and row["floor_b1_ms"] > 0 for _, row in timing.iterrows())
