"""Command line: `python -m trashlib COMMAND ...` with run, prepare, synthetic, download-taco, tune-create, tune-worker,
predict and evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trashlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the numbered notebooks with papermill and render HTML reports")
    run.add_argument("--profile", default="default", help="notebooks/params/NAME.yaml (default: default)")
    run.add_argument("--data", default="synthetic", help="COCO folder, ImageFolder, or 'synthetic' (default)")
    run.add_argument("--name", default=None, help="run name: runs/NAME and reports/NAME (default: the profile)")
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one notebook parameter (repeatable)",
    )
    run.add_argument("--notebooks", default=None, help="comma-separated notebook numbers to run, e.g. 00,01")
    run.add_argument("--force", action="store_true", help="rerun notebooks even when their outputs are current")

    prep = sub.add_parser("prepare", help="prepare a data set (manifest + crop cache) into a folder")
    prep.add_argument("source", help="a COCO folder (annotations.json + images) or an ImageFolder (<class>/<file>)")
    prep.add_argument("--out", required=True, help="folder for manifest.csv, the crop cache and dataset.json")
    prep.add_argument(
        "--mapping",
        default="taco",
        help="COCO category mapping to the six classes: a name (taco, recycle10) or a JSON file (default: taco)",
    )
    prep.add_argument(
        "--cache-side", type=int, default=128, help="side in pixels of the cached square crops (default: 128)"
    )
    prep.add_argument(
        "--margin", type=float, default=0.1, help="each COCO box grown by this fraction on every side (default: 0.1)"
    )
    prep.add_argument("--seed", type=int, default=0, help="seed of the photo-wise train/val/test split (default: 0)")

    syn = sub.add_parser("synthetic", help="write the synthetic TACO-like COCO data set")
    syn.add_argument("--out", required=True, help="folder for annotations.json and the generated photos")
    syn.add_argument("--images", type=int, default=200, help="number of photos to generate (default: 200)")
    syn.add_argument(
        "--seed", type=int, default=0, help="seed of the generator: equal seeds give equal files (default: 0)"
    )

    dl = sub.add_parser("download-taco", help="download TACO's annotations.json and images (resumable)")
    dl.add_argument("--out", required=True, help="folder for annotations.json and the images")
    dl.add_argument(
        "--annotations-url", default=None, help="http(s) URL of annotations.json (default: TACO's on GitHub)"
    )
    dl.add_argument("--workers", type=int, default=4, help="parallel downloads (default: 4)")
    dl.add_argument("--retries", type=int, default=3, help="retries of a failed request (default: 3)")
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds a connect or read may stall (default: 30)")
    dl.add_argument(
        "--backoff", type=float, default=1.0, help="first wait before a retry, doubled each time (default: 1 s)"
    )
    dl.add_argument(
        "--max-bytes", type=int, default=64 << 20, help="largest response body accepted, in bytes (default: 64 MiB)"
    )
    dl.add_argument(
        "--deadline",
        type=float,
        default=6 * 3600.0,
        help="seconds after which no request starts; the rest is left for the next run (default: 6 h)",
    )

    create = sub.add_parser(
        "tune-create", help="create an architecture-search study (or check that the existing one has these settings)"
    )
    _storage_arguments(create)
    create.add_argument(
        "--mode",
        choices=("multi", "reward"),
        default="multi",
        help="multi: maximize F1 and minimize latency; reward: MnasNet's reward",
    )
    create.add_argument("--space", default=None, help="YAML/JSON file of SearchSpace fields")
    create.add_argument("--epochs", type=int, default=3, help="training epochs per trial")
    create.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    create.add_argument("--threads", type=int, default=1, help="torch threads for training and latency")
    create.add_argument("--target-ms", type=float, default=5.0, help="latency target T of the reward")
    create.add_argument(
        "--latency-runs", type=int, default=30, help="timed calls per latency measurement (default: 30)"
    )
    create.add_argument(
        "--runtime",
        choices=("torch-eager", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"),
        default="torch-eager",
        help="where each trial's batch-1 latency is measured (onnxruntime-int8: what notebook 04 ships)",
    )

    worker = sub.add_parser("tune-worker", help="run trials of an existing study (start one per core/machine)")
    _storage_arguments(worker)
    worker.add_argument("--data-dir", required=True, help="prepared data: RUN_DIR/data")
    worker.add_argument("--n-trials", type=int, required=True, help="most trials this worker runs")
    worker.add_argument(
        "--max-trials", type=int, default=None, help="stop once this many trials have finished over all workers"
    )
    worker.add_argument("--timeout", type=float, default=None, help="seconds before starting no more trials")
    worker.add_argument("--seed", type=int, default=None, help="sampler seed (default: random)")

    pred = sub.add_parser("predict", help="classify new photos with a shipped ONNX model (no torch needed)")
    pred.add_argument(
        "model",
        help="a winner/ or deploy/<candidate>/ folder (model.onnx + model_card.json), or an .onnx file with its model "
        "card in the metadata",
    )
    pred.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders of images (one object per image), or COCO folders (annotations.json + images: "
        "every box)",
    )
    pred.add_argument(
        "--out", default=None, help="output file (default: predictions.csv, or output.csv with --format competition)"
    )
    pred.add_argument(
        "--format",
        dest="fmt",
        choices=("csv", "competition"),
        default="csv",
        help="csv: one row per object with class, confidence and per-class probabilities; competition: the "
        "competition's JSON (inference, time, macs)",
    )
    _model_arguments(pred, batch_size=32)
    pred.add_argument(
        "--no-draft",
        dest="draft",
        action="store_false",
        help="decode every JPEG at full size (exactly the workbook's crops) instead of at the largest DCT reduction "
        "that keeps each crop at least cache_side pixels",
    )
    pred.add_argument(
        "--draft-gap",
        type=float,
        default=2.0,  # predict.DRAFT_GAP (not imported here: --help stays instant)
        help="with draft: reduce a JPEG only while each crop keeps at least this many times cache_side pixels "
        "(default: 2, the same predictions as full decoding on the sets measured; 1 is faster on large photos)",
    )

    ev = sub.add_parser("evaluate", help="score a shipped ONNX model on labelled data, prepared as the workbook does")
    ev.add_argument("model", help="a winner/ or deploy/<candidate>/ folder, or an .onnx file with its card")
    ev.add_argument("data", help="a COCO folder (annotations.json + images) or an ImageFolder (<class>/<file>)")
    ev.add_argument(
        "--split",
        choices=("test", "val", "train", "all"),
        default="test",
        help="which split of the workbook's photo-wise split to score (default: test)",
    )
    ev.add_argument(
        "--out",
        default="evaluation",
        help="folder for evaluation.json, evaluation.html, predictions.csv and the prepared crops (prepared/) "
        "(default: evaluation)",
    )
    ev.add_argument(
        "--mapping",
        default="taco",
        help="COCO category mapping: a name (taco, recycle10) or a JSON file (default: taco)",
    )
    ev.add_argument("--seed", type=int, default=0, help="split seed, as the workbook's (default: 0)")
    ev.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions, as the workbook's (default: 0.7 0.15 0.15)",
    )
    _model_arguments(ev, batch_size=64)
    return parser


def _model_arguments(parser: argparse.ArgumentParser, batch_size: int) -> None:
    parser.add_argument(
        "--runtime",
        default=None,
        help="onnxruntime or openvino (default: the runtime the model card names, else onnxruntime)",
    )
    parser.add_argument("--threads", type=int, default=2, help="runtime threads, and decoding threads (default: 2)")
    parser.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"objects per model call (default: {batch_size})"
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show a progress bar on stderr even when it is not a terminal",
    )


def _storage_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage", required=True, help="database URL (postgresql://...) or journal file (RUN_DIR/search/journal.log)"
    )
    parser.add_argument("--study", required=True, help="study name")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from trashlib.workbook import main_run

        only = [s.strip() for s in args.notebooks.split(",")] if args.notebooks else None
        return main_run(
            args.profile, args.data, args.name or args.profile, params=args.param, only=only, force=args.force
        )
    if args.command == "prepare":
        from trashlib.data import DataError, PrepareConfig, prepare_dataset

        try:
            cfg = PrepareConfig(mapping=args.mapping, margin=args.margin, cache_side=args.cache_side, seed=args.seed)
            d = prepare_dataset(args.source, args.out, cfg)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{len(d.rows)} samples, {len(d.report['skipped'])} skipped -> {Path(args.out) / 'manifest.csv'}")
        return 0
    if args.command == "synthetic":
        from trashlib.synthetic import make_synthetic_coco

        try:
            print(make_synthetic_coco(Path(args.out), n_images=args.images, seed=args.seed))
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "download-taco":
        return _download(args)
    if args.command in ("tune-create", "tune-worker"):
        return _tune(args)
    if args.command in ("predict", "evaluate"):
        return _predict(args)
    return 2


def _predict(args: argparse.Namespace) -> int:
    from trashlib.predict import PredictError, main_evaluate, main_predict

    try:
        if args.command == "predict":
            return main_predict(
                args.model,
                args.inputs,
                out=args.out,
                fmt=args.fmt,
                runtime=args.runtime,
                threads=args.threads,
                batch_size=args.batch_size,
                draft=args.draft,
                draft_gap=args.draft_gap,
                progress=args.progress,
            )
        return main_evaluate(
            args.model,
            args.data,
            out=args.out,
            split=args.split,
            mapping=args.mapping,
            seed=args.seed,
            fractions=tuple(args.fractions),
            runtime=args.runtime,
            threads=args.threads,
            batch_size=args.batch_size,
            progress=args.progress,
        )
    except PredictError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _download(args: argparse.Namespace) -> int:
    from trashlib.download import DEFAULT_ANNOTATIONS_URL, DownloadError, download_taco

    try:
        summary = download_taco(
            args.out,
            args.annotations_url or DEFAULT_ANNOTATIONS_URL,
            workers=args.workers,
            retries=args.retries,
            backoff=args.backoff,
            timeout=args.timeout,
            max_bytes=args.max_bytes,
            deadline_s=args.deadline,
            progress=sys.stderr.isatty(),
        )
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line())
    if summary.ok:
        return 0
    for f in summary.failures[:10]:
        print(f"failed: {f['file_name']} ({f['url']}): {f['reason']}", file=sys.stderr)
    if len(summary.failures) > 10:
        print(f"... and {len(summary.failures) - 10} more in {summary.report}", file=sys.stderr)
    return 1


def _tune(args: argparse.Namespace) -> int:
    from trashlib.data import DataError, load_prepared
    from trashlib.tune import FINISHED, SearchData, SearchSettings, SearchSpace, TuneError, open_search, run_search

    try:
        if args.command == "tune-create":
            space = SearchSpace.from_file(args.space) if args.space else SearchSpace()
            settings = SearchSettings(
                space=space,
                mode=args.mode,
                epochs=args.epochs,
                batch_size=args.batch_size,
                threads=args.threads,
                target_ms=args.target_ms,
                latency_runs=args.latency_runs,
                runtime=args.runtime,
            )
            study, _ = open_search(args.storage, args.study, settings)
            print(f"study {args.study!r} ready ({args.mode}, {len(study.trials)} trials so far)")
            return 0
        data = SearchData.from_prepared(load_prepared(args.data_dir))
        study = run_search(
            args.storage,
            args.study,
            data,
            n_trials=args.n_trials,
            timeout=args.timeout,
            seed=args.seed,
            max_trials=args.max_trials,
        )
    except (TuneError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    print(f"worker done: study {args.study!r} has {finished} complete or pruned trials")
    return 0


if __name__ == "__main__":
    sys.exit(main())
