"""Command line: `python -m trashlib run|prepare|synthetic ...`."""

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
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override one notebook parameter (repeatable)")
    run.add_argument("--notebooks", default=None, help="comma-separated notebook numbers to run, e.g. 00,01")
    run.add_argument("--force", action="store_true", help="rerun notebooks even when their outputs are current")

    prep = sub.add_parser("prepare", help="prepare a data set (manifest + crop cache) into a folder")
    prep.add_argument("source")
    prep.add_argument("--out", required=True)
    prep.add_argument("--mapping", default="taco")
    prep.add_argument("--cache-side", type=int, default=128)
    prep.add_argument("--margin", type=float, default=0.1)
    prep.add_argument("--seed", type=int, default=0)

    syn = sub.add_parser("synthetic", help="write the synthetic TACO-like COCO data set")
    syn.add_argument("--out", required=True)
    syn.add_argument("--images", type=int, default=200)
    syn.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from trashlib.workbook import main_run

        only = [s.strip() for s in args.notebooks.split(",")] if args.notebooks else None
        return main_run(args.profile, args.data, args.name or args.profile, args.param, only, args.force)
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

        print(make_synthetic_coco(Path(args.out), n_images=args.images, seed=args.seed))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
