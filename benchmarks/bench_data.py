"""Data preparation time (decode, crop, manifest, cache) and crop-cache read throughput.

    .venv/bin/python benchmarks/bench_data.py                      # taco-sample and trashnet-256 when present
    .venv/bin/python benchmarks/bench_data.py --data PATH [PATH ...]

Prints a table and writes benchmarks/results/data.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from trashlib.bench import machine_info
from trashlib.data import PrepareConfig, load_prepared, prepare_dataset
from trashlib.files import atomic_write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(source: Path, repeats: int = 3) -> dict:
    times = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="trashlib-bench-"))
        try:
            t0 = time.perf_counter()
            prepared = prepare_dataset(source, out / "data", PrepareConfig(), progress=False)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            reused = prepare_dataset(source, out / "data", PrepareConfig(), progress=False)
            reuse_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = load_prepared(out / "data")
            x, _ = loaded.split("train")
            checksum = int(np.asarray(x, dtype=np.uint64).sum())
            read_s = time.perf_counter() - t0
            assert len(reused.rows) == len(prepared.rows) and checksum >= 0
        finally:
            shutil.rmtree(out)
    return {
        "data": source.name,
        "samples": len(prepared.rows),
        "photos": len({r["source"] for r in prepared.rows}),
        "prepare_s_median": float(np.median(times)),
        "prepare_s_all": times,
        "reuse_s": reuse_s,
        "cache_read_crops_per_s": len(x) / read_s,
        "cache_bytes": int(prepared.crops.nbytes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        nargs="*",
        type=Path,
        default=[p for p in (SHARED / "taco-sample", SHARED / "trashnet-256") if p.is_dir()],
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(p, args.repeats) for p in args.data]
    print(f"{'data':14} {'crops':>6} {'photos':>6} {'prepare s':>10} {'reuse s':>8} {'cache read crops/s':>19}")
    for r in rows:
        print(
            f"{r['data']:14} {r['samples']:6d} {r['photos']:6d} {r['prepare_s_median']:10.2f} {r['reuse_s']:8.2f} "
            f"{r['cache_read_crops_per_s']:19.0f}"
        )
    out = Path("benchmarks/results/data.json")
    atomic_write_json(out, {"rows": rows, "machine": machine_info()})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
