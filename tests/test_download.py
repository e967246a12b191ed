"""TACO downloader against a local HTTP server that injects faults: retries, timeouts, truncation, resume, safety."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import solid_jpeg
from PIL import Image

from trashlib.cli import main
from trashlib.download import (
    ANNOTATIONS_NAME,
    MANIFEST_FIELDS,
    MANIFEST_NAME,
    REPORT_NAME,
    DownloadError,
    download_taco,
)

TIMEOUT = 0.4  # client timeout; the "timeout" fault sleeps longer than this
FAST = {"backoff": 0.01, "timeout": TIMEOUT, "workers": 3}

# name -> fault injected for /img/<name>; every name also has a real JPEG (or PNG) behind it
GOOD = ("ok1.jpg", "ok2.jpg", "ok3.png", "slow.jpg")
TRANSIENT = ("flaky500.jpg", "timeout.jpg", "truncated.jpg")  # fail at first, then serve fine
PERMANENT = {"wrongtype.jpg": "wrong content type", "notimage.jpg": "not a decodable image", "missing.jpg": "HTTP 404"}


class FaultServer:
    """State shared with the handler: served bytes, request counts per path, documents by path."""

    def __init__(self, root: Path) -> None:
        self.images: dict[str, bytes] = {}
        self.docs: dict[str, bytes] = {}
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.base = ""
        for i, name in enumerate(GOOD + TRANSIENT + tuple(PERMANENT)):
            path = root / name
            if name.endswith(".png"):
                Image.new("RGB", (40, 30), (10 * i, 200, 30)).save(path)
            else:
                solid_jpeg(path, (64, 48), colour=(10 * i, 100, 200 - 10 * i))
            self.images[name] = path.read_bytes()

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def annotations(self, records: list[dict[str, Any]], path: str = "/annotations.json") -> str:
        self.docs[path] = json.dumps({"images": records, "annotations": [], "categories": []}).encode()
        return self.url(path)


def make_handler(state: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def send(self, code: int, body: bytes, ctype: str, length: int | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with state.lock:
                state.counts[self.path] += 1
                n = state.counts[self.path]
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                self.route(self.path, n)

        def route(self, path: str, n: int) -> None:
            if path == "/ann-500":
                return self.send(500, b"oops", "text/plain")
            if path == "/ann-bad":
                return self.send(200, b"{not json", "text/plain")
            if path == "/ann-list":
                return self.send(200, b"[1, 2]", "application/json")
            if path == "/ann-deep":
                return self.send(200, b"[" * 100_000 + b"]" * 100_000, "application/json")
            if path in state.docs:
                return self.send(200, state.docs[path], "text/plain; charset=utf-8")
            if path == "/redirect-ftp":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/ok1.jpg")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            name = path.removeprefix("/img/")
            body = state.images.get(name)
            if body is None or name == "missing.jpg":
                return self.send(404, b"not found", "text/plain")
            ctype = "image/png" if name.endswith(".png") else "image/jpeg"
            if name == "flaky500.jpg" and n <= 2:
                return self.send(500, b"busy", "text/plain")
            if name == "timeout.jpg" and n == 1:
                time.sleep(TIMEOUT * 2.5)
            if name == "truncated.jpg" and n == 1:
                self.close_connection = True
                return self.send(200, body[: len(body) // 2], ctype, length=len(body))
            if name == "wrongtype.jpg":
                return self.send(200, body, "text/html; charset=utf-8")
            if name == "notimage.jpg":
                return self.send(200, b"<html>this is not a JPEG</html>" * 20, ctype)
            if name == "slow.jpg":  # stalls shorter than the timeout, several times
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 400):
                    time.sleep(TIMEOUT / 4)
                    self.wfile.write(body[i : i + 400])
                    self.wfile.flush()
                return None
            return self.send(200, body, ctype)

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    state = FaultServer(served)
    httpd = QuietServer(("127.0.0.1", 0), make_handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def record(server: FaultServer, i: int, name: str, file_name: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": i,
        "file_name": file_name or f"batch_1/{name}",
        "width": 64,
        "height": 48,
        "flickr_url": server.url(f"/img/{name}"),
        **extra,
    }


def all_records(server: FaultServer) -> list[dict[str, Any]]:
    return [record(server, i, n) for i, n in enumerate(GOOD + TRANSIENT + tuple(PERMANENT))]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def decodes(path: Path) -> bool:
    with Image.open(path) as im:
        im.load()
    return True


def test_faults_are_retried_reported_and_never_half_written(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    url = server.annotations(all_records(server))
    summary = download_taco(out, url, retries=2, **FAST)

    assert (summary.total, summary.downloaded, summary.present, summary.failed) == (10, 7, 0, 3)
    for name in GOOD + TRANSIENT:
        path = out / "batch_1" / name
        assert path.read_bytes() == server.images[name] and decodes(path)
    manifest = {r["file_name"]: r for r in read_csv(out / MANIFEST_NAME)}
    assert tuple(read_csv(out / MANIFEST_NAME)[0]) == MANIFEST_FIELDS
    for name in GOOD + TRANSIENT:
        row = manifest[f"batch_1/{name}"]
        assert row["status"] == "downloaded"
        assert row["sha256"] == hashlib.sha256(server.images[name]).hexdigest()
        assert row["bytes"] == str(len(server.images[name]))
        assert row["url"] == server.url(f"/img/{name}")

    reasons = {f["file_name"]: f["reason"] for f in summary.failures}
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["failures"] == summary.failures and report["failed"] == 3 and report["downloaded"] == 7
    for name, why in PERMANENT.items():
        assert why in reasons[f"batch_1/{name}"]
        assert manifest[f"batch_1/{name}"]["status"] == "failed"
        assert not (out / "batch_1" / name).exists()
    assert leftovers(out) == []

    # transient faults were retried exactly as often as needed; permanent ones were not retried
    assert server.count("/img/flaky500.jpg") == 3
    assert server.count("/img/timeout.jpg") == 2
    assert server.count("/img/truncated.jpg") == 2
    for name in (*GOOD, "wrongtype.jpg", "notimage.jpg", "missing.jpg"):
        assert server.count(f"/img/{name}") == 1, name


def test_second_run_fetches_only_what_is_missing(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    url = server.annotations(all_records(server))
    first = download_taco(out, url, retries=0, **FAST)
    assert (first.downloaded, first.failed) == (4, 6)
    failed_first = {f["file_name"] for f in first.failures}
    assert {f"batch_1/{n}" for n in TRANSIENT} <= failed_first
    assert not any((out / "batch_1" / n).exists() for n in TRANSIENT)
    assert leftovers(out) == []

    second = download_taco(out, url, retries=2, **FAST)
    assert (second.total, second.present, second.downloaded, second.failed) == (10, 4, 3, 3)
    assert server.count("/annotations.json") == 1  # reused from disk
    for name in GOOD:
        assert server.count(f"/img/{name}") == 1, name  # not fetched again
    for name in TRANSIENT:
        assert decodes(out / "batch_1" / name)
    statuses = {r["file_name"]: r["status"] for r in read_csv(out / MANIFEST_NAME)}
    assert [statuses[f"batch_1/{n}"] for n in GOOD] == ["present"] * len(GOOD)
    assert [statuses[f"batch_1/{n}"] for n in TRANSIENT] == ["downloaded"] * len(TRANSIENT)
    assert leftovers(out) == []


def test_corrupt_file_and_stale_temp_are_replaced(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    (out / "batch_1").mkdir(parents=True)
    (out / "batch_1" / "ok1.jpg").write_bytes(server.images["ok1.jpg"][:100])  # a killed non-atomic copy
    (out / "batch_1" / ".ok2.jpg.abcd1234.tmp").write_bytes(b"partial")  # a killed atomic write
    (out / ANNOTATIONS_NAME).write_text("{truncated")
    url = server.annotations([record(server, 0, "ok1.jpg"), record(server, 1, "ok2.jpg")])
    summary = download_taco(out, url, retries=0, **FAST)
    assert (summary.downloaded, summary.failed) == (2, 0)
    assert server.count("/annotations.json") == 1  # the broken local copy was fetched again
    assert json.loads((out / ANNOTATIONS_NAME).read_text())["images"][0]["file_name"] == "batch_1/ok1.jpg"
    assert (out / "batch_1" / "ok1.jpg").read_bytes() == server.images["ok1.jpg"]
    assert leftovers(out) == []


def test_fallback_to_the_640_url(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    rec = record(server, 0, "missing.jpg", file_name="batch_2/a.jpg", flickr_640_url=server.url("/img/ok2.jpg"))
    summary = download_taco(out, server.annotations([rec]), retries=0, **FAST)
    assert summary.ok and summary.downloaded == 1
    assert (out / "batch_2" / "a.jpg").read_bytes() == server.images["ok2.jpg"]
    assert read_csv(out / MANIFEST_NAME)[0]["url"] == server.url("/img/ok2.jpg")


def test_paths_out_of_the_folder_and_other_schemes_are_refused(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    unsafe = [
        "../evil.jpg",
        "/abs_trashlib_test.jpg",
        "batch_1/../../evil2.jpg",
        "link/x.jpg",
        "a\x00b.jpg",
        "",
        REPORT_NAME,
        ".",
        chr(0xD800) + ".jpg",
        chr(0xDC80) + ".jpg",
    ]  # lone surrogates: bad JSON escapes
    records: list[Any] = [
        {"id": i, "file_name": fn, "flickr_url": server.url(f"/img/ok1.jpg?unsafe={i}")} for i, fn in enumerate(unsafe)
    ]
    records += [
        {"id": 50, "file_name": "batch_1/f.jpg", "flickr_url": "file:///etc/passwd"},
        {"id": 51, "file_name": "batch_1/g.jpg", "flickr_url": "ftp://127.0.0.1/ok1.jpg"},
        {"id": 52, "file_name": "batch_1/r.jpg", "flickr_url": server.url("/redirect-ftp")},
        {"id": 53, "file_name": "batch_1/n.jpg"},
        {"id": 54, "file_name": 7, "flickr_url": server.url("/img/ok1.jpg?unsafe=54")},
        "not a record",
        record(server, 60, "ok1.jpg"),
        record(server, 61, "ok2.jpg", file_name="batch_1/ok1.jpg"),
    ]  # duplicate file_name
    summary = download_taco(out, server.annotations(records), retries=1, **FAST)

    assert (summary.downloaded, summary.failed) == (1, len(records) - 1)
    reasons = [f["reason"] for f in summary.failures]
    assert sum("unsafe file_name" in r for r in reasons) == len(unsafe) + 1
    assert any("only http/https" in r and "file:" in r for r in reasons)
    assert any("only http/https" in r and "ftp:" in r for r in reasons)
    assert any("redirect to a non-http(s) URL refused" in r for r in reasons)
    assert any("no image URL" in r for r in reasons)
    assert any("not an object" in r for r in reasons)
    assert any("duplicate file_name" in r for r in reasons)
    assert not any(k.startswith("/img/ok1.jpg?unsafe") for k in server.counts)  # refused before any request
    assert server.count("/redirect-ftp") == 1  # a refused redirect is not retried
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "evil2.jpg").exists()
    assert not Path("/abs_trashlib_test.jpg").exists()
    assert list(outside.iterdir()) == []
    assert json.loads((out / REPORT_NAME).read_text())["failed"] == summary.failed  # not overwritten by an image
    assert sorted(p.name for p in (out / "batch_1").iterdir()) == ["ok1.jpg"]
    assert (out / "batch_1" / "ok1.jpg").read_bytes() == server.images["ok1.jpg"]
    assert leftovers(out) == []


@pytest.mark.parametrize(
    "path, message",
    [
        ("/ann-500", "HTTP 500"),
        ("/ann-bad", "not valid JSON"),
        ("/ann-deep", "not valid JSON"),
        ("/ann-list", "not COCO annotations"),
    ],
)
def test_unusable_annotations_are_one_clear_error(
    server: FaultServer, tmp_path: Path, path: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taco"
    url = server.url(path)
    with pytest.raises(DownloadError, match=message) as err:
        download_taco(out, url, retries=2, **FAST)
    assert url in str(err.value)
    assert server.count(path) == (3 if path == "/ann-500" else 1)
    assert not (out / ANNOTATIONS_NAME).exists() and not (out / MANIFEST_NAME).exists()

    assert (
        main(
            [
                "download-taco",
                "--out",
                str(out),
                "--annotations-url",
                url,
                "--retries",
                "0",
                "--backoff",
                "0.01",
                "--timeout",
                str(TIMEOUT),
            ]
        )
        == 2
    )
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: annotations ") and url in err_lines[0]


def test_local_annotations_url_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "ann.json"
    src.write_text('{"images": []}')
    assert main(["download-taco", "--out", str(tmp_path / "o"), "--annotations-url", src.as_uri()]) == 2
    err = capsys.readouterr().err
    assert "only http/https" in err and "annotations.json" in err


def test_cli_exit_codes(server: FaultServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = server.annotations([record(server, 0, "ok1.jpg"), record(server, 1, "ok3.png")], "/good.json")
    args = ["--retries", "0", "--backoff", "0.01", "--timeout", str(TIMEOUT), "--workers", "2"]
    assert main(["download-taco", "--out", str(tmp_path / "a"), "--annotations-url", good, *args]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("2 images: 2 downloaded, 0 already present, 0 failed")
    assert main(["download-taco", "--out", str(tmp_path / "a"), "--annotations-url", good, *args]) == 0
    assert "0 downloaded, 2 already present" in capsys.readouterr().out

    some = server.annotations([record(server, 0, "ok1.jpg"), record(server, 1, "missing.jpg")], "/some.json")
    assert main(["download-taco", "--out", str(tmp_path / "b"), "--annotations-url", some, *args]) == 1
    cap = capsys.readouterr()
    assert "1 downloaded" in cap.out and "1 failed" in cap.out
    assert "failed: batch_1/missing.jpg" in cap.err and "HTTP 404" in cap.err

    many = server.annotations(
        [record(server, i, "missing.jpg", file_name=f"m/{i}.jpg") for i in range(12)], "/many.json"
    )
    assert main(["download-taco", "--out", str(tmp_path / "c"), "--annotations-url", many, *args]) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("failed: ") for line in err) == 10 and "2 more" in err[-1]

    assert main(["download-taco", "--out", str(tmp_path / "d"), "--annotations-url", good, "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert main(["download-taco", "--out", str(tmp_path / "d"), "--annotations-url", good, "--timeout", "0"]) == 2
    assert "timeout" in capsys.readouterr().err


def test_manifest_is_parseable_csv(server: FaultServer, tmp_path: Path) -> None:
    out = tmp_path / "taco"
    name = 'batch_1/comma, "quote".jpg'
    summary = download_taco(out, server.annotations([record(server, 0, "ok1.jpg", file_name=name)]), retries=0, **FAST)
    assert summary.ok
    rows = list(csv.DictReader(io.StringIO((out / MANIFEST_NAME).read_text())))
    assert rows[0]["file_name"] == name and rows[0]["status"] == "downloaded"
