"""Tests for trashlib.tune and the "searched" model: space, objectives, storage, workers."""

from __future__ import annotations

import glob
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from trashlib.cli import main as cli_main
from trashlib.data import PrepareConfig, prepare_dataset
from trashlib.models import ModelError, ModelSpec, build_model, load_model, save_model
from trashlib.synthetic import make_synthetic_coco
from trashlib.tune import (
    SETTINGS_ATTR,
    ArchConfig,
    SearchData,
    SearchSettings,
    SearchSpace,
    TuneError,
    fail_stale_trials,
    load_arch,
    mnasnet_reward,
    open_search,
    open_storage,
    param_importances,
    pareto_trials,
    pick_reference,
    pick_score,
    pick_trial,
    reward_reporter,
    run_search,
    sample_arch,
    save_arch,
    settings_study_name,
    trial_arch,
    trial_objectives,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Metal", "Paper", "Paperpack", "Plastic", "Plasticbag", "Styrofoam"]
TINY_SPACE = SearchSpace(
    stages=[[8, 2], [16, 2], [24, 2], [32, 2]],
    image_sizes=[32],
    width_mults=[0.5, 1.0],
    layers_max=2,
    block_width_mults=[0.75, 1.0],
)
TINY = SearchSettings(space=TINY_SPACE, epochs=1, batch_size=16, latency_warmup=1, latency_runs=3)
NO_SERVER = "postgresql://u:secret@127.0.0.1:1/x"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune-data")
    source = make_synthetic_coco(root / "synthetic", n_images=12)
    prepare_dataset(source, root / "data", PrepareConfig(cache_side=32), progress=False)
    return root / "data"


@pytest.fixture(scope="module")
def data(data_dir: Path) -> SearchData:
    from trashlib.data import load_prepared

    return SearchData.from_prepared(load_prepared(data_dir))


def tiny_arch(image_size: int = 32) -> dict:
    blocks = [
        ("mbconv1", 3, False, 1, 8),
        ("mbconv6", 5, True, 2, 16),
        ("conv", 3, True, 2, 16),
        ("sepconv", 5, False, 2, 24),
        ("mbconv3", 3, True, 2, 32),
    ]
    return {
        "image_size": image_size,
        "stem_channels": 8,
        "head_channels": 64,
        "dropout": 0.2,
        "blocks": [
            {"op": op, "kernel": k, "se": se, "layers": 2, "stride": s, "channels": c} for op, k, se, s, c in blocks
        ],
    }


def searched_spec(arch: dict, image_size: int = 32) -> dict:
    return {"name": "searched", "num_classes": 6, "class_names": CLASSES, "image_size": image_size, "arch": arch}


def searched(arch: dict, image_size: int = 32) -> ModelSpec:
    return ModelSpec.from_dict(searched_spec(arch, image_size))


# --------------------------------------------------------------------------- the searched model


def test_searched_model_builds_trains_and_roundtrips(tmp_path: Path) -> None:
    arch = tiny_arch()
    model = build_model("searched", 6, 32, arch=arch)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.2)
    model.train()
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 6)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4)).item()
    assert abs(loss - math.log(6)) < 0.4
    model.eval()
    path = save_model(model, tmp_path / "searched.pt", searched(model.arch))
    loaded, spec = load_model(path, expect_class_names=CLASSES)
    assert spec.arch == arch
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    warm = build_model("searched", 6, 32, pretrained=path, arch=arch)
    stem = "features.0.weight"
    assert torch.equal(warm.state_dict()[stem], model.state_dict()[stem])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a["blocks"][1].update(op="mbconv9"), r"arch\['blocks'\]\[1\]\['op'\]"),
        (lambda a: a["blocks"][0].update(kernel=4), r"\['kernel'\] must be odd"),
        (lambda a: a["blocks"][2].update(stride=3), r"\['stride'\] must be 1 or 2"),
        (lambda a: a["blocks"][0].pop("se"), r"arch\['blocks'\]\[0\] must be a dict with keys"),
        (lambda a: a.pop("stem_channels"), r"lacks keys \['stem_channels'\]"),
        (lambda a: a.update(blocks=[]), "non-empty list"),
        (lambda a: a.update(image_size=64), r"arch\['image_size'\]=64 but the model is built for image_size=32"),
    ],
)
def test_bad_arch_names_the_key(change, message: str) -> None:
    arch = tiny_arch()
    change(arch)
    with pytest.raises(ModelError, match=message):
        build_model("searched", 6, 32, arch=arch)


def test_arch_only_with_searched_and_spec_needs_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="arch= is required"):
        build_model("searched", 6, 32)
    with pytest.raises(ModelError, match="refused for the others"):
        build_model("mnasnet0_5", 6, 32, arch=tiny_arch())
    model = build_model("searched", 6, 32, arch=tiny_arch())
    spec = searched_spec(tiny_arch())
    del spec["arch"]
    with pytest.raises(ModelError, match="needs its 'arch' dict"):
        save_model(model, tmp_path / "m.pt", ModelSpec.from_dict(spec))
    other = build_model("searched", 6, 32, arch={**tiny_arch(), "head_channels": 32})
    path = save_model(other, tmp_path / "other.pt", searched(other.arch))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["spec"]["arch"] = tiny_arch()
    torch.save(checkpoint, path)
    with pytest.raises(ModelError, match="weights do not fit architecture 'searched'"):
        load_model(path)


# --------------------------------------------------------------------------- space and sampling


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ops": []}, r"SearchSpace\.ops is empty"),
        ({"kernels": []}, r"SearchSpace\.kernels is empty"),
        ({"stages": []}, r"SearchSpace\.stages is empty"),
        ({"image_sizes": [64, 100]}, r"SearchSpace\.image_sizes: .*multiple of 32"),
        ({"lr_min": 1e-2, "lr_max": 1e-3}, r"SearchSpace\.lr_min=0\.01 > lr_max=0\.001"),
        ({"layers_min": 3, "layers_max": 2}, r"SearchSpace\.layers_min=3 > layers_max=2"),
        ({"weight_decay_min": 0.0}, r"SearchSpace\.weight_decay_min .* > 0"),
        ({"ops": ["mbconv6", "resnet"]}, r"SearchSpace\.ops: .*\['resnet'\]"),
        ({"kernels": [3, 4]}, r"SearchSpace\.kernels: every choice must be an odd int"),
        ({"width_mults": [1.0, 1.0]}, r"SearchSpace\.width_mults lists a choice twice"),
        ({"stages": [[16, 3]]}, r"SearchSpace\.stages\[0\]"),
        ({"augment_max": 1.5}, r"SearchSpace\.augment_min/augment_max"),
    ],
)
def test_space_validation_names_the_field(fields: dict, message: str) -> None:
    with pytest.raises(TuneError, match=message):
        SearchSpace(**fields)


def test_space_and_settings_roundtrip_and_file(tmp_path: Path) -> None:
    assert SearchSpace.from_dict(TINY_SPACE.to_dict()) == TINY_SPACE
    assert SearchSettings.from_dict(TINY.to_dict()) == TINY
    space_file = tmp_path / "space.yaml"
    space_file.write_text("image_sizes: [32, 64]\nops: [mbconv6, sepconv]\n")
    space = SearchSpace.from_file(space_file)
    assert space.image_sizes == [32, 64] and space.ops == ["mbconv6", "sepconv"]
    assert space.kernels == [3, 5]
    space_file.write_text("image_size: [32]\n")
    with pytest.raises(TuneError, match=r"unknown fields \['image_size'\]"):
        SearchSpace.from_file(space_file)
    with pytest.raises(TuneError, match="SearchSettings.mode"):
        SearchSettings(mode="pareto")


def test_sample_arch_builds_a_model_that_runs_and_reloads(tmp_path: Path) -> None:
    space = SearchSpace(image_sizes=[64], width_mults=[0.5], layers_max=2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    arch = sample_arch(trial, space)
    assert {f"b{i}_{p}" for i in range(1, 8) for p in ("op", "kernel", "se", "layers", "width")} <= set(trial.params)
    assert len(arch.blocks) == 7 and arch.image_size == 64
    assert all(block.channels % 8 == 0 for block in arch.blocks)
    assert [block.stride for block in arch.blocks] == [1, 2, 2, 2, 1, 2, 1]
    assert ArchConfig.from_dict(arch.to_dict()) == arch
    model = build_model("searched", 6, arch.image_size, arch=arch.to_dict()).eval()
    x = torch.randn(2, 3, arch.image_size, arch.image_size)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (2, 6)
    path = save_model(model, tmp_path / "best.pt", searched(arch.to_dict(), arch.image_size))
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    json_path = save_arch(arch, tmp_path / "archs", "best")
    assert json_path.with_suffix(".yaml").is_file()
    assert load_arch(tmp_path / "archs", "best") == arch
    with pytest.raises(TuneError, match=r"no saved architecture 'other'.*\['best'\]"):
        load_arch(tmp_path / "archs", "other")


# --------------------------------------------------------------------------- objectives


def test_mnasnet_reward() -> None:
    assert mnasnet_reward(0.8, 10.0, 10.0) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 20.0, 10.0) == pytest.approx(0.8 * 2**-0.07)
    assert mnasnet_reward(0.8, 5.0, 10.0) == pytest.approx(0.8 * 0.5**-0.07)
    assert mnasnet_reward(0.5, 20.0, 10.0, w=0.0) == pytest.approx(0.5)
    assert mnasnet_reward(0.8, 20.0, 10.0) < mnasnet_reward(0.8, 10.0, 10.0) < mnasnet_reward(0.8, 5.0, 10.0)
    with pytest.raises(TuneError, match="latency_ms and target_ms must be > 0"):
        mnasnet_reward(0.8, 0.0, 10.0)


def test_reward_reporter_prunes_with_the_study_pruner() -> None:
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    good = study.ask()
    reward_reporter(good, target_ms=10.0)(1, 0.9, 10.0)
    study.tell(good, 0.9)
    poor = study.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 1: reward 0.1000"):
        reward_reporter(poor, target_ms=10.0)(1, 0.1, 10.0)
    assert poor.user_attrs["latency_ms"] == 10.0


def test_reward_mode_reports_each_epoch_and_prunes(tmp_path: Path, data: SearchData) -> None:
    settings = SearchSettings(
        space=TINY_SPACE, mode="reward", epochs=2, batch_size=16, target_ms=1.0, latency_warmup=1, latency_runs=3
    )
    study, _ = open_search(tmp_path / "journal.log", "reward", settings)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    study = run_search(
        tmp_path / "journal.log",
        "reward",
        data,
        settings,
        n_trials=2,
        seed=0,
        pruner=optuna.pruners.ThresholdPruner(lower=10.0),
    )
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    for trial in study.trials:
        assert list(trial.intermediate_values) == [1]  # stopped after the first epoch
        assert trial.user_attrs["latency_ms"] > 0 and trial_arch(trial).image_size == 32


# --------------------------------------------------------------------------- storage


def test_journal_study_resumes_without_duplicates(tmp_path: Path, data: SearchData) -> None:
    journal = tmp_path / "search" / "journal.log"
    first = run_search(journal, "resume", data, TINY, n_trials=2, seed=0)
    assert len(first.trials) == 2
    study = run_search(journal, "resume", data, TINY, n_trials=2, seed=1)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    result = study.trials[3].user_attrs["result"]
    assert result["reward"] == pytest.approx(mnasnet_reward(result["val_f1"], result["latency_ms"], TINY.target_ms))
    # No settings: the stored ones are used; the cap of 4 is reached already, nothing runs.
    capped = run_search(journal, "resume", data, n_trials=5, max_trials=4)
    assert len(capped.trials) == 4


def test_study_with_other_objectives_is_refused_and_untouched(tmp_path: Path, data: SearchData) -> None:
    journal = tmp_path / "journal.log"
    study = run_search(journal, "clash", data, TINY, n_trials=1, seed=0)
    before = (study.user_attrs, study.directions, [(t.number, t.state, t.values) for t in study.trials])
    reward = SearchSettings(**{**vars(TINY), "mode": "reward"})
    with pytest.raises(
        TuneError,
        match=r"'clash' .* exists with other objectives .*directions: "
        r"stored \['maximize', 'minimize'\], given \['maximize'\]",
    ):
        run_search(journal, "clash", data, reward, n_trials=1)
    other_space = SearchSettings(**{**vars(TINY), "space": SearchSpace(image_sizes=[64])})
    with pytest.raises(TuneError, match=r"space\.image_sizes: stored \[32\], given \[64\]"):
        open_search(journal, "clash", other_space)
    storage = open_storage(journal)
    after = optuna.load_study(study_name="clash", storage=storage)
    assert (after.user_attrs, after.directions, [(t.number, t.state, t.values) for t in after.trials]) == before
    assert optuna.study.get_all_study_names(storage) == ["clash"]


def test_study_not_made_here_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="plain", direction="maximize")
    with pytest.raises(TuneError, match=r"'plain' .* was not made by trashlib.tune"):
        open_search(url, "plain", TINY)
    assert optuna.load_study(study_name="plain", storage=url).user_attrs == {}
    with pytest.raises(TuneError, match=r"no study 'absent' .*tune-create"):
        open_search(url, "absent")


def test_unreachable_storage_fails_fast_with_a_clear_error() -> None:
    started = time.perf_counter()
    shown = r"postgresql://u:\*\*\*@127.0.0.1:1/x"  # the password is hidden
    with pytest.raises(TuneError, match=rf"cannot reach storage {shown}: .*refused"):
        open_search(NO_SERVER, "study", TINY)
    assert time.perf_counter() - started < 10
    assert cli_main(["tune-create", "--storage", NO_SERVER, "--study", "s"]) == 2


def worker_command(storage: str, study: str, data_dir: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trashlib",
        "tune-worker",
        "--storage",
        storage,
        "--study",
        study,
        "--data-dir",
        str(data_dir),
        "--n-trials",
        str(n_trials),
        *extra,
    ]


def worker_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_trial_of_a_killed_worker_is_failed_on_restart(
    kind: str, tmp_path: Path, data_dir: Path, data: SearchData
) -> None:
    storage = str(tmp_path / "journal.log") if kind == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    slow = SearchSettings(**{**vars(TINY), "epochs": 500})
    study, _ = open_search(storage, "stale", slow)
    worker = subprocess.Popen(
        worker_command(storage, "stale", data_dir, 1),
        env=worker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any("arch" in t.user_attrs for t in study.get_trials(states=(TrialState.RUNNING,))):
            assert worker.poll() is None, worker.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker never started a trial"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert study.trials[0].state == TrialState.RUNNING  # left behind by the killed worker
    run_search(storage, "stale", data, slow, n_trials=0)  # the next start
    trial = optuna.load_study(study_name="stale", storage=study._storage).trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["failed_reason"] == (
        f"worker {socket.gethostname()}:{worker.pid} died while the trial was running"
    )


def test_a_live_workers_trial_is_not_failed(tmp_path: Path) -> None:
    study, _ = open_search(tmp_path / "journal.log", "live", TINY)
    trial = study.ask()
    from trashlib.tune import _worker_identity

    trial.set_user_attr("worker", _worker_identity())
    assert fail_stale_trials(study) == []
    assert study.trials[0].state == TrialState.RUNNING


# --------------------------------------------------------------------------- PostgreSQL workers


def _postgres_bin() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (as the `postgres` user when run as root)."""
    bin_dir = _postgres_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").is_file():
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="trashlib-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=60)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "tune", "--auth=trust", "--no-sync")
        pg(
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "server.log"),
            "-w",
            "-o",
            f"-p {port} -h 127.0.0.1 -k {root} -F",
            "start",
        )
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tune", "search")
        yield f"postgresql://tune@127.0.0.1:{port}/search"
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_two_workers_share_one_study(
    postgres_url: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    workers, cap = 2, 6
    assert (
        cli_main(
            [
                "tune-create",
                "--storage",
                postgres_url,
                "--study",
                "pg",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--latency-runs",
                "3",
                "--space",
                str(_tiny_space_file(data_dir.parent)),
            ]
        )
        == 0
    )
    procs = [
        subprocess.Popen(
            worker_command(postgres_url, "pg", data_dir, cap, "--max-trials", str(cap), "--seed", str(index)),
            env=worker_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for index in range(workers)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b"worker done" in out
    study = optuna.load_study(study_name="pg", storage=open_storage(postgres_url))
    trials = study.trials
    numbers = [t.number for t in trials]
    # MaxTrialsCallback stops a worker once `cap` trials have finished; a trial the other worker
    # already started still finishes, so at most workers - 1 more than the cap.
    assert cap <= len(trials) <= cap + workers - 1
    assert sorted(numbers) == list(range(len(trials))) and len(set(numbers)) == len(numbers)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.values) == 2 and t.params and "arch" in t.user_attrs for t in trials)
    assert study.user_attrs[SETTINGS_ATTR]["space"] == TINY_SPACE.to_dict()
    per_worker = sorted(Counter(t.user_attrs["worker"]["pid"] for t in trials).values())
    with capsys.disabled():
        print(
            f"\npostgres distributed search: {workers} workers, {len(trials)} trials "
            f"(per worker {per_worker}) in {time.perf_counter() - started:.1f} s"
        )


def _tiny_space_file(directory: Path) -> Path:
    import yaml

    path = directory / "tiny_space.yaml"
    path.write_text(yaml.safe_dump(TINY_SPACE.to_dict()))
    return path


# --------------------------------------------------------------------------- reading and picking trials


def fake_trial(
    number: int, f1: float, latency_ms: float, state: TrialState = TrialState.COMPLETE, **params: float
) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        state=state,
        values=[f1, latency_ms] if state == TrialState.COMPLETE else None,
        params=params or None,
        distributions={k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in params} or None,
    )
    trial.number = number
    return trial


def test_pareto_trials_keeps_the_non_dominated_completed_trials() -> None:
    trials = [
        fake_trial(0, 0.5, 2.0),
        fake_trial(1, 0.6, 3.0),
        fake_trial(2, 0.4, 4.0),
        fake_trial(3, 0.6, 3.0),
        fake_trial(4, 0.9, 1.0, state=TrialState.FAIL),
        fake_trial(5, 0.3, 1.5),
    ]
    assert [t.number for t in pareto_trials(trials)] == [0, 1, 3, 5]  # equal objectives both kept
    assert pareto_trials([]) == []


def test_pick_trial_scores_the_front_against_the_best_trial_or_the_baseline() -> None:
    a, b, c = fake_trial(0, 0.80, 10.0), fake_trial(1, 0.70, 2.0), fake_trial(2, 0.50, 1.0)
    dominated = fake_trial(3, 0.45, 12.0)
    trials = [a, b, c, dominated]
    # No baseline: the reference is the best-F1 trial (a), which scores 1.0 against itself.
    assert pick_reference(trials) == (0.80, 10.0)
    assert pick_score(0.80, 10.0, 0.80, 10.0) == pytest.approx(1.0)
    scores = {t.number: pick_score(*trial_objectives(t), 0.80, 10.0) for t in (a, b, c)}
    assert scores[1] == pytest.approx(0.1 + 1 / (1 + math.exp(-2.0)))
    assert min(scores, key=scores.get) == 1
    assert pick_trial(trials).number == 1
    # A slow, accurate baseline makes F1 matter more than latency: the most accurate trial wins.
    assert pick_reference(trials, 0.9, 100.0) == (0.9, 100.0)
    assert pick_trial(trials, baseline_f1=0.9, baseline_latency_ms=100.0).number == 0
    # Only the front is considered and ties go to the faster, then the earlier trial.
    twin = fake_trial(4, 0.70, 2.0)
    assert pick_trial([twin, b]).number == 1
    assert pick_trial([fake_trial(0, 0.5, 1.0)]).number == 0


def test_pick_trial_reads_reward_trials_and_refuses_nothing_to_pick() -> None:
    reward = optuna.trial.create_trial(value=0.3, user_attrs={"result": {"val_f1": 0.4, "latency_ms": 3.0}})
    assert trial_objectives(reward) == (0.4, 3.0)
    assert pick_trial([reward]) is reward
    with pytest.raises(TuneError, match="no completed trial among 1"):
        pick_trial([fake_trial(0, 0.5, 1.0, state=TrialState.PRUNED)])
    with pytest.raises(TuneError, match="is PRUNED, not COMPLETE"):
        trial_objectives(fake_trial(0, 0.5, 1.0, state=TrialState.PRUNED))
    with pytest.raises(TuneError, match="neither two values"):
        trial_objectives(optuna.trial.create_trial(value=0.3))
    with pytest.raises(TuneError, match=r"f1_ref must be a number in \[0, 1\]"):
        pick_trial([fake_trial(0, 0.5, 1.0)], baseline_f1=1.5, baseline_latency_ms=2.0)
    with pytest.raises(TuneError, match="latency_ref_ms must be a number > 0"):
        pick_trial([fake_trial(0, 0.5, 1.0)], baseline_f1=0.5, baseline_latency_ms=0.0)


def test_settings_study_name_follows_the_settings() -> None:
    name = settings_study_name("search", TINY)
    assert re.fullmatch(r"search-[0-9a-f]{8}", name)
    assert settings_study_name("search", SearchSettings.from_dict(TINY.to_dict())) == name
    assert settings_study_name("search", SearchSettings(**{**vars(TINY), "mode": "reward"})) != name
    other_space = SearchSettings(**{**vars(TINY), "space": SearchSpace(image_sizes=[64])})
    assert settings_study_name("search", other_space) != name
    with pytest.raises(TuneError, match="non-empty string"):
        settings_study_name("", TINY)


def test_param_importances_per_objective_and_too_few_trials() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    rows = [
        (0.1, 0.9, 0.2, 5.0),
        (0.2, 0.1, 0.3, 4.0),
        (0.8, 0.5, 0.7, 1.0),
        (0.9, 0.3, 0.9, 0.5),
        (0.5, 0.7, 0.5, 2.0),
    ]
    for number, (x, y, f1, ms) in enumerate(rows[:2]):
        study.add_trial(fake_trial(number, f1, ms, x=x, y=y))
    assert param_importances(study) == {}
    for number, (x, y, f1, ms) in enumerate(rows[2:], start=2):
        study.add_trial(fake_trial(number, f1, ms, x=x, y=y))
    importances = param_importances(study, seed=0)
    assert list(importances) == ["val_f1", "latency_ms"]
    for values in importances.values():
        assert set(values) == {"x", "y"} and sum(values.values()) == pytest.approx(1.0)
        assert max(values, key=values.get) == "x"  # both objectives follow x here
    assert param_importances(study, seed=0) == importances  # seeded: reproducible
    flat = optuna.create_study(directions=["maximize", "minimize"])
    for number, (x, y, _, ms) in enumerate(rows):
        flat.add_trial(fake_trial(number, 0.25, ms, x=x, y=y))
    assert param_importances(flat)["val_f1"] == {"x": 0.0, "y": 0.0}
