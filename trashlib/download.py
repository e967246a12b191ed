"""TACO downloader: fetch annotations.json and its images over HTTP(S), verified, atomic and resumable."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from trashlib.data import DataError, safe_path
from trashlib.files import atomic_write_bytes, atomic_write_json

DEFAULT_ANNOTATIONS_URL = "https://raw.githubusercontent.com/pedropro/TACO/master/data/annotations.json"
ANNOTATIONS_NAME = "annotations.json"
MANIFEST_NAME = "download_manifest.csv"
REPORT_NAME = "download_report.json"
SOURCE_NAME = "annotations.source.json"  # where annotations.json came from: a rerun with another URL is refused
DEFAULT_MAX_BYTES = 64 << 20  # one response body; TACO's largest photo is a few MB
DEFAULT_DEADLINE_S = 6 * 3600.0  # the whole download; TACO's 1,500 photos take minutes on a good link
MANIFEST_FIELDS = ("file_name", "url", "bytes", "sha256", "status")
URL_KEYS = ("flickr_url", "flickr_640_url")  # TACO's download.py uses flickr_url; the 640 px copy is the fallback
ALLOWED_SCHEMES = ("http", "https")
USER_AGENT = "trashlib-download/0.1 (+https://github.com/pedropro/TACO)"
RETRY_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 16
TEMP_NAME = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write_bytes' mkstemp names


class DownloadError(ValueError):
    """The download cannot start: bad arguments or unusable annotations (names the URL or file)."""


class FetchError(Exception):
    """One failed request; `retry` says whether trying the same URL again may help."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass
class DownloadSummary:
    """What one download run did; `failures` holds {file_name, url, reason} per failed image."""

    total: int
    downloaded: int
    present: int
    failed: int
    failures: list[dict[str, str]] = field(default_factory=list)
    manifest: Path | None = None
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        return (
            f"{self.total} images: {self.downloaded} downloaded, {self.present} already present, "
            f"{self.failed} failed -> {self.manifest}"
        )


# --------------------------------------------------------------------------- HTTP


class _SafeRedirect(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http/https (urllib alone would also follow ftp://)."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ALLOWED_SCHEMES:
            raise FetchError(f"redirect to a non-http(s) URL refused: {newurl[:200]}", retry=False)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def make_opener() -> urllib.request.OpenerDirector:
    """An opener for http/https only (no file:, ftp: or data: handlers), honouring proxy variables."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _SafeRedirect(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def check_url(url: Any) -> str:
    """The URL if it is http(s) with a host; FetchError (not retried) otherwise."""
    if not isinstance(url, str) or not url:
        raise FetchError(f"no URL ({url!r})", retry=False)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.netloc:
        raise FetchError(f"only http/https URLs are fetched, refused {url[:200]!r}", retry=False)
    return url


def image_problem(data: bytes) -> str | None:
    """None when the bytes decode as an image with PIL (verify, then a full load); else why not."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except UnidentifiedImageError:
        return "not a decodable image (unrecognised format)"
    except Exception as exc:  # PIL raises many types on garbage (OSError, SyntaxError, struct.error, ...)
        return f"not a decodable image ({type(exc).__name__}: {exc})"[:300]
    return None


def fetch_once(
    opener: urllib.request.OpenerDirector,
    url: str,
    timeout: float,
    expect_image: bool,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """One GET: status 200, image/* type when expect_image, the whole Content-Length, at most ``max_bytes``,
    decodable image."""
    check_url(url)
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with opener.open(req, timeout=timeout) as resp:
            if urllib.parse.urlsplit(resp.geturl()).scheme.lower() not in ALLOWED_SCHEMES:
                raise FetchError(f"ended at a non-http(s) URL {resp.geturl()[:200]}", retry=False)
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status}", retry=resp.status in RETRY_HTTP_CODES)
            ctype = resp.headers.get("Content-Type", "")
            if expect_image and not ctype.lower().startswith("image/"):
                raise FetchError(f"wrong content type {ctype!r}", retry=False)
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
                raise FetchError(f"body of {int(declared)} bytes exceeds max_bytes={max_bytes}", retry=False)
            parts: list[bytes] = []
            received = 0
            while block := resp.read(CHUNK):
                received += len(block)
                if received > max_bytes:
                    raise FetchError(f"body exceeds max_bytes={max_bytes} (stopped reading)", retry=False)
                parts.append(block)
            body = b"".join(parts)
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"HTTP {exc.code} {exc.reason}", retry=exc.code in RETRY_HTTP_CODES) from None
    except urllib.error.URLError as exc:
        timed_out = isinstance(exc.reason, TimeoutError)
        raise FetchError("timed out" if timed_out else f"connection failed ({exc.reason})", retry=True) from None
    except http.client.IncompleteRead as exc:
        raise FetchError(f"truncated body ({len(exc.partial)} bytes received)", retry=True) from None
    except TimeoutError:
        raise FetchError("timed out", retry=True) from None
    except (http.client.InvalidURL, ValueError) as exc:
        raise FetchError(f"invalid URL {url[:200]!r} ({exc})", retry=False) from None
    except (http.client.HTTPException, OSError) as exc:
        raise FetchError(f"connection failed ({type(exc).__name__}: {exc})", retry=True) from None
    if declared is not None and declared.strip().isdigit() and int(declared) != len(body):
        raise FetchError(f"truncated body ({len(body)} of {declared} bytes)", retry=True)
    if expect_image:
        problem = image_problem(body)
        if problem:
            raise FetchError(problem, retry=False)
    return body


def fetch(
    opener: urllib.request.OpenerDirector,
    url: str,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    expect_image: bool,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline: float = math.inf,
) -> bytes:
    """fetch_once with up to `retries` more tries after a retryable failure, sleeping backoff * 2**try; no try
    starts after ``deadline`` (``time.monotonic()`` seconds)."""
    for attempt in range(retries + 1):
        if time.monotonic() >= deadline:
            raise FetchError("not attempted: the download's deadline passed", retry=False)
        try:
            return fetch_once(opener, url, timeout, expect_image, max_bytes)
        except FetchError as exc:
            if not exc.retry or attempt == retries:
                if attempt:
                    raise FetchError(f"{exc.reason} (after {attempt + 1} tries)", retry=exc.retry) from None
                raise
        time.sleep(min(backoff * 2**attempt, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- annotations


def _usable_annotations(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return "top level is not an object"
    if not isinstance(doc.get("images"), list):
        return "'images' is missing or not a list"
    return None


def get_annotations(
    root: Path,
    url: str,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    opener: urllib.request.OpenerDirector,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[dict[str, Any], bool]:
    """TACO's annotations as a dict and whether they were fetched (False: reused root/annotations.json).

    The URL they came from is kept beside them (`annotations.source.json`): reusing them for another URL is a
    ``DownloadError`` (two data sets in one folder), not a silent reuse. A copy put there by hand has no source
    and is reused."""
    path, source = root / ANNOTATIONS_NAME, root / SOURCE_NAME
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            usable = _usable_annotations(doc) is None
        except (OSError, ValueError, RecursionError):  # ValueError: bad UTF-8 or JSON
            usable = False  # unusable leftover: fetch again and replace it
        if usable:
            recorded = _recorded_source(source)
            if recorded is not None and recorded != url:
                raise DownloadError(
                    f"{path} was downloaded from {recorded}, not {url}: use another --out for another data set "
                    f"(or delete {path.name} and {source.name} to replace them)"
                )
            return doc, False
    try:
        body = fetch(
            opener, url, timeout=timeout, retries=retries, backoff=backoff, expect_image=False, max_bytes=max_bytes
        )
    except FetchError as exc:
        hint = f" (to use a local file, copy it to {path})" if not exc.retry and "only http" in exc.reason else ""
        raise DownloadError(f"annotations {url}: {exc.reason}{hint}") from None
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, too deep, an int of > 4300 digits
        raise DownloadError(f"annotations {url}: not valid JSON ({exc})") from None
    problem = _usable_annotations(doc)
    if problem:
        raise DownloadError(f"annotations {url}: not COCO annotations ({problem})")
    atomic_write_json(source, {"url": url, "sha256": hashlib.sha256(body).hexdigest()})
    atomic_write_bytes(path, body)
    return doc, True


def _recorded_source(path: Path) -> str | None:
    """The URL `annotations.source.json` names, or None (no such file: a copy put there by hand)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"{path}: unreadable ({exc}); delete it to download the annotations again") from None
    url = doc.get("url") if isinstance(doc, dict) else None
    if not isinstance(url, str):
        raise DownloadError(f"{path}: names no 'url'; delete it to download the annotations again")
    return url


# --------------------------------------------------------------------------- images


def image_urls(record: dict[str, Any]) -> list[str]:
    """The record's image URLs in preference order (flickr_url, then flickr_640_url), without repeats."""
    urls: list[str] = []
    for key in URL_KEYS:
        u = record.get(key)
        if isinstance(u, str) and u and u not in urls:
            urls.append(u)
    return urls


def remove_stale_temps(root: Path, expected: set[Path]) -> int:
    """Delete temp files a killed earlier run left beside the files it was writing; returns how many.

    atomic_write_bytes names them `.NAME.XXXXXXXX.tmp`; only those beside an expected NAME are touched,
    and symlinked folders are not followed.
    """
    removed = 0
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            m = TEMP_NAME.match(f)
            if m and Path(dirpath, m.group(1)) in expected:
                Path(dirpath, f).unlink(missing_ok=True)
                removed += 1
    return removed


def download_image(
    root: Path,
    record: Any,
    index: int,
    *,
    reserved: set[Path],
    timeout: float,
    retries: int,
    backoff: float,
    opener: urllib.request.OpenerDirector,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline: float = math.inf,
) -> dict[str, str]:
    """One image record -> a manifest row (plus a `reason` when it failed)."""
    if not isinstance(record, dict):
        return _failed(f"images[{index}]", "", f"images[{index}] is not an object")
    fn = record.get("file_name")
    urls = image_urls(record)
    url = urls[0] if urls else ""
    name = fn if isinstance(fn, str) and fn else f"images[{index}]"
    try:
        path = safe_path(root, fn)
        str(fn).encode("utf-8")  # a lone surrogate escape would name a file no manifest can hold
    except (DataError, UnicodeEncodeError) as exc:
        return _failed(name, url, f"unsafe file_name: {exc}")
    if path == root.resolve() or path in reserved:
        return _failed(name, url, f"unsafe file_name: {fn!r} names the download folder or one of its own files")
    if not urls:
        return _failed(name, "", f"no image URL in {'/'.join(URL_KEYS)}")
    if path.is_file():
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        if data and image_problem(data) is None:
            return _row(name, url, data, "present")
    if time.monotonic() >= deadline:
        return _failed(name, url, "not attempted: the download's deadline passed")
    reasons: list[str] = []
    for u in urls:
        try:
            data = fetch(
                opener,
                u,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                expect_image=True,
                max_bytes=max_bytes,
                deadline=deadline,
            )
        except FetchError as exc:
            reasons.append(exc.reason if len(urls) == 1 else f"{u}: {exc.reason}")
            continue
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            return _failed(name, u, f"cannot write {path}: {exc}")
        return _row(name, u, data, "downloaded")
    return _failed(name, url, "; ".join(reasons))


def _row(name: str, url: str, data: bytes, status: str) -> dict[str, str]:
    return {
        "file_name": name,
        "url": url,
        "bytes": str(len(data)),
        "sha256": hashlib.sha256(data).hexdigest(),
        "status": status,
    }


def _failed(name: str, url: str, reason: str) -> dict[str, str]:
    return {"file_name": name, "url": url, "bytes": "", "sha256": "", "status": "failed", "reason": reason}


def manifest_bytes(rows: list[dict[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8", "backslashreplace")  # lone surrogates from bad JSON escapes


# --------------------------------------------------------------------------- the run


def download_taco(
    out_dir: str | Path,
    annotations_url: str = DEFAULT_ANNOTATIONS_URL,
    *,
    workers: int = 4,
    retries: int = 3,
    backoff: float = 1.0,
    timeout: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline_s: float = DEFAULT_DEADLINE_S,
    progress: bool = False,
) -> DownloadSummary:
    """Fetch TACO's annotations and images into out_dir; resumable, every file written atomically.

    Images already present and decodable are not fetched again; failures are listed, never half-written.
    `timeout` bounds each connect and each read; a retryable failure is tried `retries` more times,
    waiting backoff, 2*backoff, 4*backoff, ... seconds. A body larger than `max_bytes` is refused; after
    `deadline_s` seconds no request starts (in-flight ones end within `timeout`) and the images not attempted are
    listed as failed, to be fetched by the next run.
    """
    if not isinstance(workers, int) or workers < 1:
        raise DownloadError(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(retries, int) or retries < 0:
        raise DownloadError(f"retries must be a non-negative integer, got {retries!r}")
    if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise DownloadError(f"timeout must be positive seconds, got {timeout!r}")
    if not (isinstance(backoff, (int, float)) and 0 <= backoff < math.inf):
        raise DownloadError(f"backoff must be non-negative seconds, got {backoff!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DownloadError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if not (isinstance(deadline_s, (int, float)) and 0 < deadline_s <= math.inf):
        raise DownloadError(f"deadline must be positive seconds, got {deadline_s!r}")
    deadline = time.monotonic() + deadline_s
    root = Path(out_dir).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"output folder {root}: {exc}") from None
    opener = make_opener()
    doc, _ = get_annotations(
        root, annotations_url, timeout=timeout, retries=retries, backoff=backoff, opener=opener, max_bytes=max_bytes
    )
    records: list[Any] = doc["images"]
    reserved = {(root / n).resolve() for n in (ANNOTATIONS_NAME, MANIFEST_NAME, REPORT_NAME, SOURCE_NAME)}

    expected = set(reserved)
    for rec in records:
        with contextlib.suppress(DataError):
            expected.add(safe_path(root, rec.get("file_name") if isinstance(rec, dict) else None))
    remove_stale_temps(root.resolve(), expected)

    rows: list[dict[str, str] | None] = [None] * len(records)
    seen: dict[Path | str, int] = {}
    jobs: list[int] = []
    for i, rec in enumerate(records):
        fn = rec.get("file_name") if isinstance(rec, dict) else None
        try:  # dup.jpg and ./dup.jpg are one file: compare where they lead, not how they are spelled
            where: Path | str | None = safe_path(root, fn) if isinstance(fn, str) else None
        except DataError:
            where = fn  # refused by download_image, with the reason
        if isinstance(fn, str) and where in seen:
            rows[i] = _failed(
                fn, (image_urls(rec) or [""])[0], f"duplicate file_name: the same file as images[{seen[where]}]"
            )
            continue
        if where is not None:
            seen[where] = i
        jobs.append(i)

    from tqdm import tqdm

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taco-download")
    try:
        futures = {
            pool.submit(
                download_image,
                root,
                records[i],
                i,
                reserved=reserved,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                opener=opener,
                max_bytes=max_bytes,
                deadline=deadline,
            ): i
            for i in jobs
        }
        for fut in tqdm(as_completed(futures), total=len(futures), desc="images", disable=not progress):
            rows[futures[fut]] = fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

    done = [r for r in rows if r is not None]
    failures = [
        {"file_name": r["file_name"], "url": r["url"], "reason": r["reason"]} for r in done if r["status"] == "failed"
    ]
    summary = DownloadSummary(
        total=len(done),
        downloaded=sum(r["status"] == "downloaded" for r in done),
        present=sum(r["status"] == "present" for r in done),
        failed=len(failures),
        failures=failures,
        manifest=root / MANIFEST_NAME,
        report=root / REPORT_NAME,
    )
    atomic_write_bytes(root / MANIFEST_NAME, manifest_bytes(done))
    atomic_write_json(
        root / REPORT_NAME,
        {
            "annotations_url": annotations_url,
            "annotations_source": _recorded_source(root / SOURCE_NAME) or "annotations.json put there by hand",
            "total": summary.total,
            "downloaded": summary.downloaded,
            "present": summary.present,
            "failed": summary.failed,
            "failures": failures,
        },
    )
    return summary
