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
# # 02 · Search: an architecture for the latency budget, timed in the runtime that ships
#
# Two modes (`mode`):
# - **`ofa`** (once-for-all, the default): the ImageNet-pretrained EfficientNet-Lite0 (the run's fine-tuned
#   teacher when notebook 01 made one) becomes an elastic supernet: depth per stage (the first k blocks), expansion
#   width per block (channels ranked by importance, so a narrower block is a prefix) and input resolution. It is
#   fine-tuned once with the sandwich rule (largest, smallest and random sub-networks each step, the others
#   distilled from the largest). Any sub-network is then scored without retraining (BatchNorm recalibrated on a
#   few hundred training crops, validation macro-F1) and timed in the deploy runtime (`runtime`, onnxruntime int8
#   by default); an NSGA-II study searches the front, and the pick gets a short distilled fine-tune.
# - **`mnasnet`**: the from-scratch search over MnasNet's factorized space (each trial trains a network; latency in
#   eager PyTorch), as before.
#
# Either way the chosen model is saved as the candidate `search/searched/` that notebooks 03 to 05 treat like any
# other. Reads `data/` and, when present, `baseline/`; writes `search/` (the study journal, `supernet.pt`,
# `ofa.json`, the candidate).

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
mode = "ofa"  # "ofa": once-for-all search on the pretrained EfficientNet-Lite0; "mnasnet": from-scratch MnasNet search
runtime = "onnxruntime-int8"  # the deploy runtime the OFA latency objective is measured in
ofa_resolutions = [64, 96]
ofa_expand_ratios = [3, 4, 6]
ofa_min_depth = 1
supernet_epochs = 1
supernet_lr = 0.001
supernet_random = 1  # random sub-networks per step besides the largest and the smallest
supernet_augment = 0.3
supernet_crops = 48  # training crops the supernet trains on (0: all of them; the pick's fine-tune uses all)
recalibration_crops = 64
ofa_trials = 6
ofa_latency_runs = 10
latency_check_n = 4  # random sub-networks of the quick-versus-careful latency check (30 or more outside smoke runs)
latency_check_runs = 20
ofa_finetune_epochs = 2
ofa_finetune_lr = 0.0005
ofa_pick = "score"  # "score": competition-style score on the front; "speedup": most accurate at ofa_speedup x baseline
ofa_speedup = 4.0  # with ofa_pick "speedup": the pick is at least this much faster than the baseline in ORT fp32
ofa_pick_slack = 1.5  # with "speedup": front points up to this times the budget (quick timing) are re-timed carefully
ofa_distill_from = "largest"  # the pick's fine-tune teacher: "largest" sub-network, or notebook 01's "teacher"
mnasnet_objective = (
    "multi"  # "multi": Pareto front of val F1 and latency; "reward": MnasNet's F1 * (latency / target_ms) ** -0.07
)
n_trials = 4  # trials the study holds when this notebook is done (a rerun runs only the missing ones)
trial_epochs = 1
final_epochs = 10
image_sizes = [64]
width_mults = [0.5]
layers_max = 1
batch_size = 32
target_ms = 5.0
seed = 0
threads = 2
device = "cpu"  # "auto": the final retraining on CUDA when present (trials and every timing stay on the CPU)
latency_runs = 10
study_name = "search"
storage_url = ""  # "" keeps the study in the run's journal file; or a database URL shared with tune-worker processes

# %%
import time

import numpy as np
import optuna
import pandas as pd
from IPython.display import display
from optuna.trial import TrialState

from trashlib import formats, report
from trashlib.candidate import assess_candidate, check_above_chance, load_candidate, save_candidate
from trashlib.files import atomic_write_json
from trashlib.models import EfficientNetLite0, ModelSpec, build_model, weights_sha256
from trashlib.quantize import calibration_batches, time_deployed_rounds
from trashlib.run import open_run
from trashlib.supernet import (
    ElasticLite0,
    OfaSpace,
    SubnetConfig,
    SubnetEvaluator,
    careful_subnet_timer,
    check_runtime,
    deployed,
    front_trials,
    latency_check,
    mnasnet_studies,
    open_ofa_study,
    pick_front,
    pick_within_careful,
    recalibration_images,
    run_ofa_search,
    save_supernet,
    subnet_spec,
    train_supernet,
)
from trashlib.train import TrainConfig, evaluate, seed_everything, train_model
from trashlib.tune import (
    SETTINGS_ATTR,
    SearchData,
    SearchSettings,
    SearchSpace,
    arch_train_config,
    journal_path,
    open_search,
    param_importances,
    pareto_trials,
    pick_reference,
    pick_trial,
    run_search,
    save_arch,
    settings_study_name,
    trial_arch,
    trial_objectives,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no log line per trial: the search cell prints a summary
assert mode in ("ofa", "mnasnet"), f"mode must be 'ofa' or 'mnasnet', got {mode!r}"
check_runtime(runtime)
assert ofa_pick in ("score", "speedup"), f"ofa_pick must be 'score' or 'speedup', got {ofa_pick!r}"
assert ofa_distill_from in ("largest", "teacher"), f"ofa_distill_from: 'largest' or 'teacher', not {ofa_distill_from!r}"
run = open_run(run_dir)
dataset = run.prepared(data)
train, val = dataset.split("train"), dataset.split("val")
params = dict(
    mode=mode,
    runtime=runtime,
    ofa_resolutions=ofa_resolutions,
    ofa_expand_ratios=ofa_expand_ratios,
    ofa_min_depth=ofa_min_depth,
    supernet_epochs=supernet_epochs,
    supernet_lr=supernet_lr,
    supernet_random=supernet_random,
    supernet_augment=supernet_augment,
    supernet_crops=supernet_crops,
    recalibration_crops=recalibration_crops,
    ofa_trials=ofa_trials,
    ofa_latency_runs=ofa_latency_runs,
    latency_check_n=latency_check_n,
    latency_check_runs=latency_check_runs,
    ofa_finetune_epochs=ofa_finetune_epochs,
    ofa_finetune_lr=ofa_finetune_lr,
    ofa_pick=ofa_pick,
    ofa_speedup=ofa_speedup,
    ofa_distill_from=ofa_distill_from,
    mnasnet_objective=mnasnet_objective,
    n_trials=n_trials,
    trial_epochs=trial_epochs,
    final_epochs=final_epochs,
    image_sizes=image_sizes,
    width_mults=width_mults,
    layers_max=layers_max,
    batch_size=batch_size,
    target_ms=target_ms,
    seed=seed,
    threads=threads,
    latency_runs=latency_runs,
    study_name=study_name,
    storage_url=storage_url,
    device=device,
)
storage = storage_url or journal_path(run.run_dir)
saved = load_candidate(run, "baseline", "baseline")
baseline = saved.record if saved else None
teacher_saved = load_candidate(run, "baseline", "teacher")
if mode == "ofa" and ofa_pick == "speedup" and saved is None:
    raise ValueError(f"ofa_pick='speedup' times the pick against the baseline: run notebook 01 in {run.run_dir} first")
if mode == "ofa" and ofa_distill_from == "teacher" and teacher_saved is None:
    raise ValueError(f"ofa_distill_from='teacher' needs notebook 01's teacher in {run.run_dir / 'baseline'}")
ref_f1, ref_ms = (baseline["f1_test"], baseline["latency_b1_ms"]) if baseline else (None, None)
print(
    f"mode {mode}; {len(train[1])} train / {len(val[1])} val crops, classes {dataset.classes}; baseline: "
    + (
        f"{baseline['model']}, test F1 {ref_f1:.3f}, {ref_ms:.2f} ms"
        if baseline
        else "none in the run directory (notebook 01 not run): the pick rule uses the best trial instead"
    )
)

# %% [markdown]
# ## OFA 1 · The supernet, fine-tuned once with the sandwich rule
# Built on the run's fine-tuned EfficientNet-Lite0 teacher when notebook 01 made one (a whole, unpruned Lite0), else
# on the ImageNet weights with a fresh head. Each block's expansion channels are sorted by importance (L1 norm of
# their projection weights) before training, so every narrower width is a prefix. Each step trains the largest
# sub-network on the labels and the smallest plus `supernet_random` random ones distilled from the largest's
# logits, each at its own resolution; validation (and the best-epoch pick) uses the largest. The epoch checkpoint
# `search/supernet_checkpoint.pt` resumes an interrupted run; `search/supernet.pt` is the result, with its class
# list (a supernet of another class list is refused).

# %%
space = OfaSpace(resolutions=tuple(ofa_resolutions), expand_ratios=tuple(ofa_expand_ratios), min_depth=ofa_min_depth)
largest = space.largest()
supernet_seconds = 0.0
if mode == "ofa":
    seed_everything(seed)
    source_net = teacher_saved.model if teacher_saved is not None else None
    if isinstance(source_net, EfficientNetLite0) and teacher_saved.spec.structure is None:
        supernet, importances = ElasticLite0.from_network(source_net, dataset.classes)
        supernet_source = "the run's fine-tuned teacher"
    else:
        supernet, importances = ElasticLite0.pretrained(dataset.classes)
        supernet_source = "ImageNet weights"
    supernet_config = TrainConfig.for_spec(
        subnet_spec(largest, dataset.classes),
        epochs=supernet_epochs,
        lr=supernet_lr,
        batch_size=batch_size,
        augment=supernet_augment,
        seed=seed,
        threads=threads,
        device=device,
    )
    supernet_train = train if not supernet_crops else tuple(part[:supernet_crops] for part in train)
    supernet_result = train_supernet(
        supernet,
        supernet_train,
        val,
        space=space,
        config=supernet_config,
        checkpoint_path=run.path("search", "supernet_checkpoint.pt"),
        n_random=supernet_random,
        restart_other_runs=True,
    )
    supernet_seconds = sum(row["epoch_seconds"] for row in supernet_result.history)
    save_supernet(supernet, run.path("search", "supernet.pt"), extra={"space": space.to_dict()})
    supernet.eval()
    fig = report.plot_training(supernet_result.history, "supernet (largest sub-network)")
    print(
        f"supernet from {supernet_source}: {supernet_result.epochs_run} epochs in {supernet_seconds:.0f} s, "
        f"largest sub-network val F1 {supernet_result.best_val_f1:.3f}"
    )

# %% [markdown]
# ## OFA 2 · Channel importances
# Each expanding block's channels in importance order (scaled to its most important one): a steep curve means a
# narrow width keeps most of what the block computes.

# %%
if mode == "ofa":
    fig = report.plot_channel_importances(importances)

# %% [markdown]
# ## OFA 3 · Is the quick latency a faithful ranking?
# The search times each sub-network quickly (export to ONNX, int8 calibration on 32 crops, `ofa_latency_runs`
# calls at batch 1 with `threads` threads). Here `latency_check_n` random sub-networks are timed that way and then
# carefully (3 interleaved rounds of `latency_check_runs` calls, median of the round medians): Kendall's tau
# between the two rankings says how far the search can trust its latency objective.

# %%
if mode == "ofa":
    recalibration = recalibration_images(train[0], recalibration_crops, seed=seed)
    check = latency_check(
        supernet,
        space,
        recalibration,
        n=latency_check_n,
        runtime=runtime,
        quick_runs=ofa_latency_runs,
        careful_runs=latency_check_runs,
        threads=threads,
        seed=seed,
    )
    fig = report.plot_latency_check(check.quick_ms, check.careful_ms, check.tau, runtime)
    print(f"{latency_check_n} sub-networks, Kendall's tau {check.tau:.3f} ({check.seconds:.0f} s)")

# %% [markdown]
# ## OFA 4 · The search
# NSGA-II over depths, expand ratios and resolution, two objectives: validation macro-F1 after BatchNorm
# recalibration on `recalibration_crops` training crops (up) and batch-1 latency in `runtime` (down). The study
# lives in the same storage as the MnasNet search (the run's journal, or `storage_url`), under a name that carries
# the space, runtime and the supernet's weights, so a rerun resumes it and a retrained supernet gets a study of its
# own.

# %%
if mode == "ofa":
    evaluator = SubnetEvaluator(
        supernet, recalibration, val, runtime=runtime, threads=threads, latency_runs=ofa_latency_runs
    )
    ofa_key = f"{study_name}-ofa-{weights_sha256(supernet)[:8]}-{runtime}"
    ofa_study = open_ofa_study(storage, ofa_key, space, runtime, seed=seed)
    started = time.perf_counter()
    ofa_study = run_ofa_search(ofa_study, evaluator, space, n_trials=ofa_trials)
    ofa_complete = [t for t in ofa_study.trials if t.state == TrialState.COMPLETE]
    trial_seconds = [t.user_attrs["seconds"] for t in ofa_complete]
    per_hour = 3600 * len(trial_seconds) / sum(trial_seconds)
    ofa_importances = param_importances(ofa_study, min_trials=3, seed=seed)
    if ofa_importances:  # which elastic choices move F1 and latency (fANOVA over the trials)
        fig = report.plot_importances(ofa_importances)
    print(
        f"study {ofa_key!r}: {len(ofa_complete)} sub-networks scored, {np.mean(trial_seconds):.1f} s each "
        f"({per_hour:.0f} per hour)"
    )

# %% [markdown]
# ## OFA 5 · Fronts against the baseline and the teacher, in the deploy runtime
# The baseline and the teacher of notebook 01 are scored the same way: validation macro-F1 and the careful batch-1
# latency in `runtime`. When the run's journal also holds a MnasNet study, its trials are drawn too (with the
# latency in the runtime that study was made with, shown in the legend).

# %%
landmarks: dict[str, tuple[float, float]] = {}
landmark_rows = []
if mode == "ofa":
    for label, found in (("baseline", saved), ("teacher", teacher_saved)):
        if found is None:
            continue
        model_l, spec_l = found.model, found.spec
        f1_l = evaluate(model_l, *val, dataset.classes, spec_l.image_size, normalization=spec_l.normalization)[
            "macro_f1"
        ]
        calib = calibration_batches(recalibration, spec_l, batch_size=32, max_images=32)
        fn = deployed(model_l, spec_l, runtime, calibration=calib, threads=threads)
        ms = time_deployed_rounds(fn, spec_l.image_size, runs=latency_check_runs, threads=threads)
        landmarks[f"{label} ({spec_l.name}, {runtime})"] = (ms, f1_l)
        landmark_rows.append({"model": label, "name": spec_l.name, "val_f1": f1_l, f"{runtime}_ms": ms})
    fronts = {"OFA sub-networks": [(t.values[1], t.values[0]) for t in ofa_complete]}
    for other in mnasnet_studies(storage, study_name):  # a MnasNet search run earlier in this run directory
        done = [t for t in other.trials if t.state == TrialState.COMPLETE and len(t.values) == 2]
        other_runtime = other.user_attrs.get(SETTINGS_ATTR, {}).get("runtime", "torch-eager")
        fronts[f"MnasNet trials ({other_runtime} ms) {other.study_name}"] = [
            (trial_objectives(t).latency_ms, trial_objectives(t).val_f1) for t in done
        ]
    ofa_front = front_trials(ofa_study)
    if landmarks:
        f1_ref_ofa, ms_ref_ofa = min(landmarks.values(), key=lambda p: -p[1])[1], max(p[0] for p in landmarks.values())
    else:
        f1_ref_ofa = max(t.values[0] for t in ofa_front)
        ms_ref_ofa = max(t.values[1] for t in ofa_front)
    budget_ms, careful_pick = None, None
    if ofa_pick == "speedup":  # the yardstick: the baseline in onnxruntime fp32, timed here beside the front
        base_fn = deployed(saved.model, saved.spec, "onnxruntime-fp32", threads=threads)
        yardstick_ms = time_deployed_rounds(base_fn, saved.spec.image_size, runs=latency_check_runs, threads=threads)
        budget_ms = yardstick_ms / ofa_speedup
        timer = careful_subnet_timer(
            supernet, runtime, recalibration, (base_fn, saved.spec.image_size), threads=threads, runs=latency_check_runs
        )
        careful_pick = pick_within_careful(ofa_front, yardstick_ms, ofa_speedup, timer, slack=ofa_pick_slack)
        picked_trial = careful_pick.trial
        base_f1 = next(r["val_f1"] for r in landmark_rows if r["model"] == "baseline")
        landmarks[f"baseline ({saved.spec.name}, onnxruntime-fp32)"] = (yardstick_ms, base_f1)
        fronts["careful re-timing, ms x quick baseline / careful baseline"] = [
            (r["careful_ms"] * yardstick_ms / careful_pick.baseline_ms, r["val_f1"]) for r in careful_pick.candidates
        ]
        print(
            f"baseline in onnxruntime-fp32: {yardstick_ms:.2f} ms; budget at {ofa_speedup:g}x: {budget_ms:.2f} ms in "
            f"{runtime}; {sum(t.values[1] <= budget_ms for t in ofa_front)} front points within it by the quick "
            f"timing; {len(careful_pick.candidates)} re-timed beside the baseline "
            f"({careful_pick.baseline_ms:.2f} ms), {sum(r['speedup'] >= ofa_speedup for r in careful_pick.candidates)} "
            f"of them at least {ofa_speedup:g}x"
        )
        display(formats.format_table(pd.DataFrame(careful_pick.candidates)))
    else:
        picked_trial = pick_front(ofa_front, f1_ref_ofa, ms_ref_ofa)[0]
    chosen_config = SubnetConfig.from_dict(picked_trial.user_attrs["subnet"])
    fig = report.plot_fronts(
        fronts,
        landmarks,
        runtime=runtime,
        chosen=(picked_trial.values[1], picked_trial.values[0]),
        budget_ms=budget_ms,
    )
    if landmark_rows:
        display(formats.format_table(pd.DataFrame(landmark_rows)))
    front_table = pd.DataFrame(
        [
            {
                "trial": t.number,
                "val_f1": t.values[0],
                f"{runtime}_ms": t.values[1],
                "macs": t.user_attrs["macs"],
                "resolution": t.user_attrs["subnet"]["resolution"],
                "depths": t.user_attrs["subnet"]["depths"],
            }
            for t in ofa_front
        ]
    )
    display(formats.format_table(front_table))

# %% [markdown]
# ## OFA 6 · The chosen sub-network, block by block, and its distilled fine-tune
# Picked on the front (`ofa_pick`). With `"score"`, by the competition-style score against the best landmark's
# validation F1 and the slowest landmark's latency (`0.5 * ms / ms_ref + sigmoid(20 * (f1_ref - f1))`). With
# `"speedup"`, the most accurate point at least `ofa_speedup` times faster than the baseline in onnxruntime fp32
# (the dashed line in the plot above; the fastest point when none is that fast). The quick timing that ranks the
# search is not careful enough to hold a budget (it put a 3.0x point at 3.6x in one run), so the front points up to
# `ofa_pick_slack` times the budget are timed again beside the baseline, interleaved in this process, and the budget
# is checked on that ratio (the table above; "careful re-timing" in the plot). The score leans to accuracy
# near the teacher, where the sub-networks are barely faster than the teacher. The budget fixes the speed and
# lets the fine-tune buy the accuracy back. The pick is extracted, recalibrated and fine-tuned for
# `ofa_finetune_epochs` epochs, distilled from `ofa_distill_from`: the supernet's largest sub-network, or notebook
# 01's fine-tuned teacher. The checkpoint `search/checkpoint.pt` resumes an interrupted run.

# %%
if mode == "ofa":
    display(pd.DataFrame(chosen_config.describe()))
    spec = subnet_spec(chosen_config, dataset.classes)
    student = evaluator.subnet(chosen_config)
    if ofa_distill_from == "teacher":
        ofa_teacher, teacher_spec = teacher_saved.model, teacher_saved.spec
    else:
        ofa_teacher, teacher_spec = evaluator.subnet(largest), subnet_spec(largest, dataset.classes)
    config = TrainConfig.for_spec(
        spec,
        teacher=teacher_spec,
        epochs=ofa_finetune_epochs,
        lr=ofa_finetune_lr,
        batch_size=batch_size,
        augment=supernet_augment,
        seed=seed,
        threads=threads,
        device=device,
    )
    seed_everything(seed)
    result = train_model(
        student,
        train,
        val,
        config,
        teacher=ofa_teacher,
        checkpoint_path=run.path("search", "checkpoint.pt"),
        restart_other_runs=True,
    )
    fig = report.plot_training(result.history, f"chosen sub-network (trial {picked_trial.number})")
    print(
        f"trial {picked_trial.number}: val F1 {picked_trial.values[0]:.3f} before, {result.best_val_f1:.3f} after "
        f"the fine-tune; {picked_trial.values[1]:.2f} ms in {runtime}"
    )
    ofa_info = {
        "runtime": runtime,
        "supernet_source": supernet_source,
        "supernet_seconds": supernet_seconds,
        "supernet_epochs": supernet_result.epochs_run,
        "study": ofa_key,
        "trials": len(ofa_complete),
        "subnets_per_hour": per_hour,
        "latency_check": {
            "n": latency_check_n,
            "tau": check.tau,
            "quick_ms": check.quick_ms,
            "careful_ms": check.careful_ms,
            "seconds": check.seconds,
        },
        "front": [
            {
                "trial": t.number,
                "val_f1": t.values[0],
                "latency_ms": t.values[1],
                "macs": t.user_attrs["macs"],
                "subnet": t.user_attrs["subnet"],
            }
            for t in ofa_front
        ],
        "landmarks": landmark_rows,
        "chosen": {
            "trial": picked_trial.number,
            "subnet": chosen_config.to_dict(),
            "pick": ofa_pick,
            "budget_ms": budget_ms,
            "careful": None
            if careful_pick is None
            else {
                "baseline_ms": careful_pick.baseline_ms,
                "slack": ofa_pick_slack,
                "candidates": careful_pick.candidates,
            },
            "distilled_from": ofa_distill_from,
            "finetune_epochs": ofa_finetune_epochs,
        },
    }
    atomic_write_json(run.path("search", "ofa.json"), ofa_info)

# %% [markdown]
# ## MnasNet · The search
# Every trial samples an architecture and its training knobs, times its batch-1 latency at its own input size
# with `threads` threads in `runtime` (exported to ONNX and quantized for onnxruntime int8, the default), trains
# it for `trial_epochs` epochs and reports the best validation macro-F1.
# The sampler is multivariate TPE with constant liar (safe for parallel workers).
#
# **Resuming.** The study lives in the journal file `search/journal.log` under the name
# `<study_name>-<8 hex digits of the search settings>` (`settings_study_name`): a rerun with the same space,
# mode, trial epochs, threads... opens the same study and runs only the trials still missing to reach
# `n_trials` (`max_trials=n_trials`; nothing runs when they are all there); a rerun with another space or mode
# gets a study of its own beside the old one instead of an error. The sampler is seeded with `seed` plus the
# number of trials already stored, so a resumed study does not draw its first trials again. To search with
# several machines against one database, see "Distributed search" in the README; with `storage_url` set, this
# notebook joins that study (created by `tune-create`, with the settings stored there), runs trials with the
# workers until the study holds `n_trials`, and analyses them all.

# %%
if mode == "mnasnet":
    mnasnet_space = SearchSpace(image_sizes=image_sizes, width_mults=width_mults, layers_max=layers_max)
    settings = SearchSettings(
        space=mnasnet_space,
        mode=mnasnet_objective,
        epochs=trial_epochs,
        batch_size=batch_size,
        threads=threads,
        target_ms=target_ms,
        latency_runs=latency_runs,
        train_seed=seed,
        runtime=runtime,
    )
    study_key = study_name if storage_url else settings_study_name(study_name, settings)
    study, settings = open_search(storage, study_key, None if storage_url else settings)  # a shared study keeps its own
    before = len(study.trials)
    study = run_search(
        storage,
        study_key,
        SearchData.from_prepared(dataset),
        settings,
        n_trials=n_trials,
        max_trials=n_trials,
        seed=seed + before,
    )
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    print(
        f"study {study_key!r} in {storage}: ran {len(trials) - before} trials now; "
        f"{len(complete)} of {len(trials)} complete"
    )

# %% [markdown]
# ## MnasNet · Pareto front: validation macro-F1 against measured latency
# Every completed trial, the non-dominated ones joined. The star is the baseline of notebook 01: its **test**
# macro-F1 (trials show validation F1) and its batch-1 latency measured when notebook 01 ran, so it is a
# landmark, not an exact comparison.

# %%
if mode == "mnasnet":
    fig = report.plot_pareto(trials, baseline=baseline)

# %% [markdown]
# ## MnasNet · Parameter importances, per objective
# fANOVA (a random forest's variance decomposition, seeded) over the completed trials; parameters with a single
# choice in the space score 0. With few trials this is a hint, and it needs at least 3 completed trials.

# %%
if mode == "mnasnet":
    importances = param_importances(study, min_trials=3, seed=seed)
    if importances:
        fig = report.plot_importances(importances)
    else:
        print(f"only {len(complete)} completed trial(s): parameter importances need at least 3")

# %% [markdown]
# ## MnasNet · Optimization history
# Each trial's objective values in order, and the best so far.

# %%
if mode == "mnasnet":
    fig = report.plot_history(study)

# %% [markdown]
# ## MnasNet · The pick rule
# Among the completed trials **on the Pareto front**, take the one with the lowest competition-style score
#
#     score = 0.5 * latency_ms / latency_ref_ms + sigmoid(20 * (f1_ref - val_f1))      # lower is better
#
# with the reference `(f1_ref, latency_ref_ms)` = the baseline's test macro-F1 and batch-1 latency when
# notebook 01 wrote them, else the best-F1 trial's validation F1 and latency (so the reference itself scores
# 1.0). Ties go to the faster, then the earlier trial (`trashlib.tune.pick_trial`). It is the competition's
# formula with batch-1 latency in place of the submit time, so it trades F1 against latency the way the
# competition does; the score is monotone in both, so the lowest score is always on the front.

# %%
if mode == "mnasnet":
    f1_ref, latency_ref = pick_reference(trials, ref_f1, ref_ms)
    chosen = pick_trial(trials, ref_f1, ref_ms)
    arch = trial_arch(chosen)
    save_arch(arch, run.path("search"), "chosen")
    display(formats.format_table(report.trial_table(trials, f1_ref, latency_ref).query("pareto")))
    picked = trial_objectives(chosen)
    print(
        f"reference: F1 {f1_ref:.3f}, {latency_ref:.2f} ms ({'baseline' if baseline else 'best trial'}); chosen: "
        f"trial {chosen.number}, val F1 {picked.val_f1:.3f}, {picked.latency_ms:.2f} ms, "
        f"input {arch.image_size} px, blocks {[(b.op, b.kernel, b.layers, b.channels) for b in arch.blocks]}"
    )

# %% [markdown]
# ## MnasNet · Retrain the chosen architecture with the full budget
# Its own input size, lr, weight decay and augmentation, `final_epochs` epochs, ImageNet normalisation (as
# MnasNet); the checkpoint `search/checkpoint.pt` resumes an interrupted run (other parameters start afresh).

# %%
if mode == "mnasnet":
    spec = ModelSpec.create("searched", dataset.classes, arch.image_size, arch=arch.to_dict())
    config = arch_train_config(arch, final_epochs, batch_size=batch_size, seed=seed, threads=threads, device=device)
    seed_everything(seed)
    model = build_model(spec.name, spec.num_classes, arch.image_size, arch=spec.arch)
    result = train_model(
        model, train, val, config, checkpoint_path=run.path("search", "checkpoint.pt"), restart_other_runs=True
    )
    fig = report.plot_training(result.history, f"searched (trial {chosen.number})")
    print(f"best validation macro-F1 {result.best_val_f1:.3f} at epoch {result.best_epoch}, {result.seconds:.0f} s")

# %% [markdown]
# ## Test-split quality and cost
# Assessed exactly like the baseline: test macro-F1 (public and private halves), batch-1 latency and batch-32
# throughput at the model's own input size, submit time from the files on disk, and both scores.

# %%
searched = assess_candidate(
    "searched", result.model, spec, dataset, threads=threads, baseline=baseline, latency_runs=latency_runs
)
if mode == "mnasnet":
    search_info = {
        "mode": mode,
        "study": study_key,
        "storage": str(storage),
        "trials": len(trials),
        "complete": len(complete),
        "trial": chosen.number,
        "trial_val_f1": picked.val_f1,
        "trial_latency_ms": picked.latency_ms,
        "pick_f1_ref": f1_ref,
        "pick_latency_ref_ms": latency_ref,
        "pick_reference": "baseline" if baseline else "best trial",
    }
else:
    search_info = {
        "mode": mode,
        "study": ofa_key,
        "storage": str(storage),
        "trials": len(ofa_study.trials),
        "complete": len(ofa_complete),
        "trial": picked_trial.number,
        "trial_val_f1": picked_trial.values[0],
        "trial_latency_ms": picked_trial.values[1],
        "runtime": runtime,
        "subnets_per_hour": per_hour,
        "latency_check_tau": check.tau,
        "supernet_seconds": supernet_seconds,
    }
save_candidate(
    run,
    "search",
    searched,
    result.model,
    spec,
    params=params,
    extra={"training": result.to_dict(), "search": search_info},
)
fig = report.plot_confusion(searched, dataset.classes, f"searched test macro-F1 {searched['f1_test']:.3f}")

# %% [markdown]
# ## Summary
# Scores: `0.5 * t / t_ref + sigmoid(20 * (f1_ref - f1))` on the submit time, lower is better; "published"
# uses the competition's constants, "relative" the baseline's test F1 and submit time (empty without one).

# %%
columns = [
    "model",
    "image_size",
    "f1_test",
    "f1_public",
    "f1_private",
    "latency_b1_ms",
    "throughput_b32_ips",
    "submit_s",
    "params",
    "macs",
    "size_bytes",
    "score_published",
    "score_relative",
]
table = pd.DataFrame(
    [r for r in (searched, baseline) if r],
    columns=columns,
    index=[n for n, r in (("searched", searched), ("baseline", baseline)) if r],
)
display(formats.format_table(table))
run.headline(
    "02_search",
    {
        "mode": mode,
        "trials": search_info["trials"],
        "complete": search_info["complete"],
        "chosen_trial": search_info["trial"],
        **(
            {"pareto": len(pareto_trials(trials))}
            if mode == "mnasnet"
            else {
                "pareto": len(ofa_front),
                "subnets_per_hour": round(per_hour),
                "latency_tau": round(check.tau, 3),
                "supernet_seconds": round(supernet_seconds, 1),
            }
        ),
        "searched_f1": round(searched["f1_test"], 4),
        "searched_latency_ms": round(searched["latency_b1_ms"], 3),
        "searched_params": searched["params"],
        "searched_macs": searched["macs"],
        **({"searched_score_relative": round(searched["score_relative"], 4)} if baseline else {}),
    },
)
written = [
    *([] if storage_url else [storage]),
    *(
        [run.path("search", "chosen.json"), run.path("search", "chosen.yaml")]
        if mode == "mnasnet"
        else [run.path("search", "supernet.pt"), run.path("search", "ofa.json")]
    ),
    run.path("search", "searched", "model.pt"),
    run.path("search", "searched", "metrics.json"),
]
print("wrote", *written, sep="\n  ")

assert search_info["complete"] > 0, "no trial completed"
if mode == "mnasnet":
    assert searched["image_size"] == arch.image_size == chosen.params["image_size"] == spec.image_size, (
        "latency not measured at the chosen model's own input size"
    )
else:
    assert searched["image_size"] == chosen_config.resolution == spec.image_size, "not timed at its own resolution"
    assert spec.subnet == chosen_config.to_dict() and load_candidate(run, "search", "searched") is not None
    assert -1.0 <= check.tau <= 1.0 and len(check.careful_ms) == latency_check_n
    assert per_hour > 0 and supernet_result.epochs_run == supernet_epochs
assert searched["latency_b1_ms"] > 0 and config.mean == spec.mean and config.std == spec.std
print(check_above_chance("searched", searched["f1_test"], len(dataset.classes), data))
assert searched["submit_agrees_with_cache"], "predictions from the files on disk differ from the crop cache"
assert all(p.is_file() for p in written), [str(p) for p in written if not p.is_file()]
