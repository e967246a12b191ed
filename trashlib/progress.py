"""Progress of long loops: live tqdm bars in JupyterLab; one line per step to the runner's progress file under it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "TRASHLIB_PROGRESS_FILE"  # set by the workbook runner for the notebook kernels it starts


def under_runner() -> bool:
    """Whether this process runs a notebook for the workbook runner (which reads the progress file)."""
    return bool(os.environ.get(ENV))


def bars_enabled(progress: bool = True) -> bool:
    """Whether a loop shows a tqdm bar: when asked to, and not under the runner (bars there become page noise)."""
    return progress and not under_runner()


def step(what: str, done: int, total: int, detail: str = "") -> None:
    """Say ``what done/total`` (e.g. "epoch 3/10") to the runner's progress file; nothing outside the runner."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = f"{what} {done}/{total}" + (f" ({detail})" if detail else "")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line.replace("\n", " ") + "\n")
    except OSError:  # progress is a courtesy: a missing folder or full disk must not fail training
        pass


class Tail:
    """Follow a progress file from a thread, passing each new line to ``log`` with a prefix, at most one line every
    ``interval`` seconds (the latest one wins), and the last line when stopped."""

    def __init__(self, path: Path, log: Callable[[str], Any], prefix: str, *, interval: float = 5.0) -> None:
        self.path, self.log, self.prefix, self.interval = Path(path), log, prefix, interval
        self._stop = threading.Event()
        self._offset = 0
        self._said = ""
        self._latest = ""
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> Tail:
        self.path.unlink(missing_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._read()
        self._say()
        self.path.unlink(missing_ok=True)

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self._offset += len(complete)
        lines = [line for line in complete.decode("utf-8", errors="replace").splitlines() if line.strip()]
        if lines:
            self._latest = lines[-1]

    def _say(self) -> None:
        if self._latest and self._latest != self._said:
            self.log(f"{self.prefix}{self._latest}")
            self._said = self._latest

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()
            self._say()
