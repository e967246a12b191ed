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
# # 01 · Baseline: MnasNet trained on the crops, timed and scored
#
# The reference every later notebook is measured against: MnasNet 1.0 trained on the run's crops, evaluated
# with macro-F1 on the test split (public and private halves), timed the way the competition timed it (the
# whole test split predicted from the files on disk), and scored with the competition's formula. Optionally an
# ImageNet-pretrained EfficientNet-Lite0 is fine-tuned too: the teacher for distillation and a strong reference.
# Reads `data/` from the run directory; writes `baseline/<model>/model.pt` and `metrics.json`.

# %% tags=["parameters"]
run_dir = "../runs/scratch"
data = "synthetic"
model_name = "mnasnet1_0"
image_size = 64
epochs = 10
batch_size = 32
optimizer = "adamw"
lr = 0.003
weight_decay = 0.01
schedule = "cosine"
label_smoothing = 0.1
imbalance = "weighted"
augment = 0.3
patience = 0
pretrained = ""  # "" from scratch, "imagenet" torchvision's weights from the torch cache, or a weights file
teacher_epochs = 1
teacher_image_size = 64
teacher_lr = 0.001
seed = 0
threads = 2
device = "cpu"  # "auto": train on CUDA when present (latency and submit times are always measured on the CPU)
latency_runs = 20

# %%
import pandas as pd
from IPython.display import display

from trashlib import formats, report
from trashlib.candidate import assess_candidate, check_above_chance, save_candidate
from trashlib.models import ModelSpec, build_model
from trashlib.run import open_run
from trashlib.train import TrainConfig, epochs_per_minute, seed_everything, teacher_config, train_model

run = open_run(run_dir)
dataset = run.prepared(data)
train, val = dataset.split("train"), dataset.split("val")
params = dict(
    model_name=model_name,
    image_size=image_size,
    epochs=epochs,
    batch_size=batch_size,
    optimizer=optimizer,
    lr=lr,
    weight_decay=weight_decay,
    schedule=schedule,
    label_smoothing=label_smoothing,
    imbalance=imbalance,
    augment=augment,
    patience=patience,
    pretrained=pretrained,
    seed=seed,
    threads=threads,
    device=device,
)
print(f"{len(train[1])} train / {len(val[1])} val crops, classes {dataset.classes}")

# %% [markdown]
# ## Train the baseline
# One loop for every model: AdamW (or SGD), cosine (or one-cycle) schedule, label smoothing, class-weighted loss,
# `transforms.v2` augmentation; the checkpoint with the best validation macro-F1 is kept. The loop checkpoints
# every epoch to `baseline/<model>/checkpoint.pt`, so an interrupted run resumes where it stopped (a rerun
# with other parameters starts afresh).

# %%
spec = ModelSpec.create(model_name, dataset.classes, image_size)
seed_everything(seed)  # the initial weights too: two runs with one seed give the same model
model = build_model(
    model_name, len(dataset.classes), image_size, pretrained=True if pretrained == "imagenet" else pretrained or False
)
config = TrainConfig.from_params(spec, params)
result = train_model(
    model,
    train,
    val,
    config,
    checkpoint_path=run.path("baseline", model_name, "checkpoint.pt"),
    restart_other_runs=True,
)
fig = report.plot_training(result.history, model_name)
print(f"trained on {result.device}; timing below runs on the CPU with {threads} threads")
print(
    f"best validation macro-F1 {result.best_val_f1:.3f} at epoch {result.best_epoch}, "
    f"{sum(h['epoch_seconds'] for h in result.history):.0f} s, {epochs_per_minute(result.history):.1f} epochs/min"
)

# %% [markdown]
# ## Test-split quality and cost
# Latency at batch 1 and throughput at batch 32 at the model's own input size with fixed threads; the submit time
# decodes every test crop from its source photo on disk, preprocesses it and predicts, as the competition did.
# Macro-F1 averages over the classes present in the split (its labels or the predictions, as scikit-learn and the
# competition compute it); `f1_test_all_classes` counts an absent class as 0 too.

# %%
baseline = assess_candidate("baseline", result.model, spec, dataset, threads=threads, latency_runs=latency_runs)
baseline.update(score_relative=1.0)  # the baseline is its own reference
save_candidate(run, "baseline", baseline, result.model, spec, params=params, extra={"training": result.to_dict()})
fig = report.plot_confusion(baseline, dataset.classes, f"{model_name} test macro-F1 {baseline['f1_test']:.3f}")
display(pd.DataFrame(baseline["per_class"]).T.round(3))

# %% [markdown]
# ## EfficientNet-Lite0, fine-tuned from ImageNet (the teacher)
# Skipped when `teacher_epochs` is 0.

# %%
teacher = None
if teacher_epochs > 0:
    t_spec = ModelSpec.create("efficientnet_lite0", dataset.classes, teacher_image_size)
    seed_everything(seed)
    t_model = build_model(t_spec.name, len(dataset.classes), teacher_image_size, pretrained=True)
    t_params = {
        **params,
        "teacher_epochs": teacher_epochs,
        "teacher_image_size": teacher_image_size,
        "teacher_lr": teacher_lr,
    }
    t_config = teacher_config(t_spec, t_params)
    t_result = train_model(
        t_model,
        train,
        val,
        t_config,
        checkpoint_path=run.path("baseline", "teacher", "checkpoint.pt"),
        restart_other_runs=True,
    )
    teacher = assess_candidate(
        "teacher", t_result.model, t_spec, dataset, threads=threads, baseline=baseline, latency_runs=latency_runs
    )
    save_candidate(
        run, "baseline", teacher, t_result.model, t_spec, params=t_params, extra={"training": t_result.to_dict()}
    )
    fig = report.plot_training(t_result.history, "EfficientNet-Lite0")

# %% [markdown]
# ## Summary
# Scores: `0.5 * t / t_ref + sigmoid(20 * (f1_ref - f1))`, lower is better; "published" uses the competition's
# constants (f1_ref 0.70, t_ref 43.16 s), "relative" uses this baseline's test F1 and submit time.

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
table = pd.DataFrame([r for r in (baseline, teacher) if r], columns=columns).set_index("model")
display(formats.format_table(table))
run.headline(
    "01_baseline",
    {
        "baseline_f1": round(baseline["f1_test"], 4),
        "baseline_latency_ms": round(baseline["latency_b1_ms"], 3),
        "baseline_submit_s": round(baseline["submit_s"], 3),
        **({"teacher_f1": round(teacher["f1_test"], 4)} if teacher else {}),
    },
)

print(check_above_chance("baseline", baseline["f1_test"], len(dataset.classes), data))
assert baseline["submit_agrees_with_cache"], "predictions from the files on disk differ from the crop cache"
assert baseline["submit_n"] == len(dataset.split("test")[1])
assert (
    run.path("baseline", "baseline", "model.pt").is_file()
    and run.path("baseline", "baseline", "metrics.json").is_file()
)
