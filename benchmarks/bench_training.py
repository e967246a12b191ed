"""Training speed with a profile's recipes: epochs per minute (baseline MnasNet, the EfficientNet-Lite0 teacher)
and search trials per hour, with what they project for the profile's whole notebooks 01 and 02.

    .venv/bin/python benchmarks/bench_training.py --data ../shared/data/trashnet-256
    .venv/bin/python benchmarks/bench_training.py --data ../shared/data/taco-sample --fit pad --trials 4

Runs one process, one thing at a time, with the profile's threads; the search runs in a throw-away journal.
Prints a table and writes benchmarks/results/training-<data>-<profile>.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from optuna.trial import TrialState

from trashlib.bench import machine_info
from trashlib.data import PrepareConfig, PreparedData
from trashlib.files import atomic_write_json
from trashlib.models import ModelSpec, build_model
from trashlib.run import open_run
from trashlib.train import TrainConfig, epochs_per_minute, seed_everything, teacher_config, train_model
from trashlib.tune import SearchData, SearchSettings, SearchSpace, run_search
from trashlib.workbook import profile_parameters


def time_training(spec: ModelSpec, config: TrainConfig, data: PreparedData, pretrained: bool) -> dict:
    """Train ``spec``'s model with ``config`` (notebook 01's recipe); per-epoch seconds and epochs per minute."""
    seed_everything(config.seed)
    model = build_model(spec.name, spec.num_classes, spec.image_size, pretrained=pretrained)
    result = train_model(model, data.split("train"), data.split("val"), config, progress=False)
    name, image_size = spec.name, spec.image_size
    seconds = [h["epoch_seconds"] for h in result.history]
    return {
        "model": name,
        "image_size": image_size,
        "epochs": len(seconds),
        "epoch_s_median": statistics.median(seconds),
        "epochs_per_min": epochs_per_minute(result.history),
    }


def time_search(p: dict, data, trials: int) -> dict:
    """``trials`` trials of notebook 02's search ``p`` in a temporary journal; trials per hour."""
    space = SearchSpace(image_sizes=p["image_sizes"], width_mults=p["width_mults"], layers_max=p["layers_max"])
    settings = SearchSettings(
        space=space,
        mode=p["mode"],
        epochs=p["trial_epochs"],
        batch_size=p["batch_size"],
        threads=p["threads"],
        target_ms=p["target_ms"],
        latency_runs=p["latency_runs"],
        train_seed=p["seed"],
    )
    with tempfile.TemporaryDirectory(prefix="trashlib-bench-search-") as tmp:
        start = time.perf_counter()
        study = run_search(
            Path(tmp) / "journal.log",
            "bench",
            SearchData.from_prepared(data),
            settings,
            n_trials=trials,
            seed=p["seed"],
        )
        seconds = time.perf_counter() - start
        states = [t.state for t in study.trials]  # the journal goes with the directory
    return {
        "trials": len(states),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "seconds": seconds,
        "trials_per_hour": 3600 * len(states) / seconds,
        "trial_epochs": p["trial_epochs"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--profile", default="real", help="whose notebook 01 and 02 parameters to time")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per model")
    parser.add_argument("--trials", type=int, default=4, help="search trials timed")
    parser.add_argument(
        "--fit",
        default="stretch",
        choices=["pad", "stretch"],
        help="stretch suits whole-object photos (TrashNet); pad suits object crops (TACO)",
    )
    args = parser.parse_args()
    params = profile_parameters(args.profile)
    nb01, nb02 = params["01_baseline"], params["02_search"]
    data_name = Path(args.data).resolve().name
    run = open_run(Path("runs") / f"bench-{data_name}-{args.fit}")
    data = run.data(args.data, PrepareConfig(cache_side=128, fit=args.fit), progress=False)
    print(
        f"{data_name}: {len(data.split('train')[1])} train / {len(data.split('val')[1])} val crops; "
        f"profile {args.profile}, {nb01['threads']} threads",
        flush=True,
    )
    spec = ModelSpec.create(nb01["model_name"], data.classes, nb01["image_size"])
    rows = [time_training(spec, TrainConfig.from_params(spec, nb01, epochs=args.epochs, patience=None), data, False)]
    rows[-1]["projected_s"] = rows[-1]["epoch_s_median"] * nb01["epochs"]
    if nb01["teacher_epochs"] > 0:
        t_spec = ModelSpec.create("efficientnet_lite0", data.classes, nb01["teacher_image_size"])
        t_config = teacher_config(t_spec, {**nb01, "teacher_epochs": args.epochs})
        rows.append(time_training(t_spec, t_config, data, True))
        rows[-1]["projected_s"] = rows[-1]["epoch_s_median"] * nb01["teacher_epochs"]
    search = time_search(nb02, data, args.trials)
    search["projected_s"] = 3600 * nb02["n_trials"] / search["trials_per_hour"]
    print(f"\n{'what':34} {'epoch s':>8} {'epochs/min':>11} {'projected s':>12}")
    for row in rows:
        print(
            f"{row['model'] + ' @' + str(row['image_size']):34} {row['epoch_s_median']:8.1f} "
            f"{row['epochs_per_min']:11.2f} {row['projected_s']:12.0f}"
        )
    print(
        f"{'search, ' + str(nb02['trial_epochs']) + '-epoch trials':34} {'':8} {'':11} {search['projected_s']:12.0f}"
        f"   {search['trials_per_hour']:.1f} trials/hour ({search['complete']} complete, {search['pruned']} pruned "
        f"of {search['trials']} in {search['seconds']:.0f} s)"
    )
    print(
        f"projections: notebook 01's {nb01['epochs']} + {nb01['teacher_epochs']} epochs and notebook 02's "
        f"{nb02['n_trials']} trials (its final retraining not included)"
    )
    out = Path("benchmarks/results") / f"training-{data_name}-{args.profile}.json"
    atomic_write_json(
        out, {"data": data_name, "profile": args.profile, "training": rows, "search": search, "machine": machine_info()}
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
