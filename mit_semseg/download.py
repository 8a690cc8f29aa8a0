"""Files fetched over HTTP(S) into a per-user cache, trusted only once checked.

The cache is ``$MIT_SEMSEG_HOME``, else ``mit_semseg`` beside :func:`torch.hub.get_dir`
(``~/.cache/torch/mit_semseg`` unless ``$TORCH_HOME`` or ``$XDG_CACHE_HOME`` say otherwise).
A file comes into ``<file>.part`` and takes its name once it passes its checks; its SHA-256 is
then recorded in ``<file>.sha256`` (``sha256sum`` format) and compared on every later use.
Weights are fetched whole by :func:`torch.hub.download_url_to_file`, which compares no byte
count with ``Content-Length``: the caller's ``check`` (they load as the expected model's) is
what keeps a cut file from being trusted. The ADE20K archive (923 MB) has no such check and
comes by the resumable transfer here, which counts bytes, resumes with HTTP ``Range`` and
restarts from zero when a ``206`` answer's validators differ from the ``.part``'s.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch.hub
from tqdm import tqdm

from mit_semseg.files import atomic_write_text, exclusive_lock

__all__ = ["ENV_HOME", "ENV_SHA256", "DownloadError", "cache_root", "cached_download",
           "expected_sha256", "sha256_file"]

logger = logging.getLogger(__name__)

ENV_HOME = "MIT_SEMSEG_HOME"
ENV_SHA256 = "MIT_SEMSEG_SHA256"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or a file's check failed. ``str()`` is one line with the details (URL,
    error); ``summary`` is a shorter line for a command line."""

    def __init__(self, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.summary = summary or message


def cache_root() -> Path:
    """``$MIT_SEMSEG_HOME``, else ``mit_semseg`` beside :func:`torch.hub.get_dir`."""
    home = os.environ.get(ENV_HOME)
    return Path(home).expanduser() if home else Path(torch.hub.get_dir()).parent / "mit_semseg"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _digest(text: str, source: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", text.strip().lower()):
        raise DownloadError(f"{source}: {text.strip()!r} is not a SHA-256 digest (64 hex digits)")
    return text.strip().lower()


def expected_sha256(path: str | os.PathLike, sha256: str | None = None
                    ) -> tuple[str | None, str]:
    """The digest ``path`` must have and where it comes from, else ``(None, "")``: the
    ``sha256`` argument, the ``$MIT_SEMSEG_SHA256`` entry (``NAME=HEX`` pairs, the longest
    ``NAME`` that ends the path wins) or ``<path>.sha256``. A malformed one raises
    DownloadError naming its source."""
    path = Path(path)
    if sha256:
        return _digest(sha256, "sha256 argument"), "given by the caller"
    matches = []
    for item in re.split(r"[,;\s]+", os.environ.get(ENV_SHA256, "").strip()):
        name, sep, digest = item.rpartition("=")
        if item and not (sep and name):
            raise DownloadError(f"{ENV_SHA256}: entry {item!r} is not NAME=SHA256")
        if item and path.parts[-len(Path(name).parts):] == Path(name).parts:
            matches.append((len(Path(name).parts), name, digest))
    if matches:
        _, name, digest = max(matches)
        return _digest(digest, f"{ENV_SHA256} entry {name}"), f"from ${ENV_SHA256}"
    record = _beside(path, ".sha256")
    if record.is_file():
        words = record.read_text(encoding="utf-8").split()
        return _digest(words[0] if words else "", str(record)), f"recorded in {record}"
    return None, ""


def _one_line(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason  # the socket error, without urllib's "<urlopen error ...>" wrapper
    return " ".join(str(error).split()) or type(error).__name__


class _Interrupted(Exception):
    """The transfer stopped after the request was answered; another request may finish it."""


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _beside(part, ".validator").unlink(missing_ok=True)


def _transfer_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """One request that completes ``part``, resuming it when it has validators."""
    record = _beside(part, ".validator")  # the ETag, Last-Modified and length of its file
    text = record.read_text(encoding="utf-8") if part.is_file() and record.is_file() else ""
    saved = (text.split("\n") + ["", ""])[:3]
    offset = part.stat().st_size if saved[0] or saved[1] else 0
    headers = {"User-Agent": "mit_semseg"}
    if offset:  # a server honouring If-Range sends the whole file if it changed
        headers.update({"Range": f"bytes={offset}-", "If-Range": saved[0] or saved[1]})
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as error:
        if offset and error.code == 416:  # the part is longer than the file
            _discard(part)
            raise _Interrupted("the file on the server is shorter; starting again") from error
        raise
    with response:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers["Content-Range"] or "")
        validators = [response.headers["ETag"] or "", response.headers["Last-Modified"] or "",
                      match.group(2) if match else response.headers["Content-Length"] or ""]
        resumed = response.status == 206
        if resumed and (validators != saved or not match or int(match.group(1)) != offset):
            _discard(part)  # a server that ignored If-Range: its bytes are of another version
            raise _Interrupted("the file changed on the server; starting again")
        if not resumed:
            atomic_write_text(record, "\n".join(validators))
        total = int(validators[2]) if validators[2].isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=offset if resumed else 0, unit="B", unit_scale=True,
                unit_divisor=1024, desc=part.stem, disable=not progress, leave=False) as bar:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    bar.update(out.write(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise _Interrupted(_one_line(error)) from error
    if total is not None and part.stat().st_size != total:
        raise _Interrupted(f"connection closed after {part.stat().st_size} of {total} bytes")


def _transfer(url: str, part: Path, progress: bool, timeout: float, attempts: int) -> None:
    for attempt in range(1, attempts + 1):
        try:
            return _transfer_once(url, part, progress, timeout)
        except _Interrupted as interruption:
            if attempt == attempts:
                raise ConnectionError(str(interruption)) from interruption
            logger.warning("%s: %s (try %d of %d)", url, interruption, attempt + 1, attempts)


def _problem(check: Callable[[Path], object] | None, file: Path) -> str | None:
    """Why ``check`` refuses ``file`` (one line), or None."""
    try:
        if check is not None:
            check(file)
    except Exception as error:  # what a check raises is its own business; it is reported
        return _one_line(error)
    return None


def _record(path: Path, digest: str) -> None:
    atomic_write_text(_beside(path, ".sha256"), f"{digest}  {path.name}\n")


def _fetch(url: str, path: Path, part: Path, check: Callable[[Path], object] | None,
           progress: bool, timeout: float, attempts: int) -> None:
    """Fills ``part``: whole through torch.hub when ``check`` can judge it, else resumably."""
    logger.info("downloading %s to %s", url, path)
    try:
        if check is None:
            return _transfer(url, part, progress, timeout, max(1, attempts))
        for stale in path.parent.glob(glob.escape(part.name) + ".*.partial"):
            stale.unlink()  # torch.hub's temporary file, left by a killed process
        torch.hub.download_url_to_file(url, str(part), progress=progress)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DownloadError(f"cannot download {url} ({_one_line(error)}); fetch it some other "
                            f"way and save it as {path.resolve()}",
                            summary=f"cannot download {path.name}") from error


def cached_download(url: str, path: str | os.PathLike, *, sha256: str | None = None,
                    check: Callable[[Path], object] | None = None, progress: bool = True,
                    timeout: float = 60.0, attempts: int = 3) -> Path:
    """``path``, compared with its expected SHA-256 (:func:`expected_sha256`); downloaded from
    ``url`` when missing or different. A file without a digest is recorded once ``check``
    accepts it. Concurrent callers wait for one download (a lock file, deleted after). In a
    read-only folder (a shared, pre-filled cache) a present file is only compared.

    Args:
        check: raises if a file is not what it should be (another model's weights, cut
            short); with it the file is fetched whole (module docstring).
        progress: a tqdm bar while downloading.
        timeout, attempts: seconds without data, and requests per call, of the resumable
            transfer (``check=None``); torch.hub's has neither (it waits for the system's
            socket timeout and makes one request).

    Raises:
        DownloadError: the download failed (a resumable transfer keeps its ``.part``), or a
            file failed its digest or ``check`` (nothing is kept); one line naming the URL
            and the path, ``summary`` without them.
    """
    path, read_only = Path(path), not os.access(Path(path).parent, os.W_OK)
    if read_only and path.is_file():
        expected, source = expected_sha256(path, sha256)
        actual = sha256_file(path) if expected else None
        if actual != expected:
            raise DownloadError(f"{path}: SHA-256 {actual} differs from {expected} ({source}) "
                                "and its folder is read-only, so it cannot be fetched again; "
                                "replace it with a good copy")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = _beside(path, ".part")
    with exclusive_lock(_beside(path, ".lock")):
        expected, source = expected_sha256(path, sha256)
        if path.is_file():
            actual = sha256_file(path)
            if actual == expected:
                return path
            problem = _problem(check, path) if expected is None else None
            if problem:
                raise DownloadError(f"{path} is not usable ({problem}); replace it, or delete "
                                    "it to download it again",
                                    summary=f"{path} is not usable; replace or delete it")
            if expected is None:
                _record(path, actual)
                return path
            logger.warning("%s: SHA-256 %s differs from %s (%s); the file is corrupted or was "
                           "replaced, downloading it again", path, actual, expected, source)
            path.unlink()
        _fetch(url, path, part, check, progress, timeout, attempts)
        actual = sha256_file(part)
        problem = _problem(check, part) if expected is None else None
        if problem or actual != (expected or actual):
            _discard(part)
            raise DownloadError(
                f"{url} sent a file that is not usable ({problem}); nothing was saved at "
                f"{path.resolve()}, the next run downloads it again" if problem else
                f"{url} sent a file with SHA-256 {actual}, expected {expected} ({source}); "
                f"nothing was saved at {path.resolve()} (if the file changed on the server on "
                f"purpose, delete {_beside(path, '.sha256')} to accept the new one)",
                summary=f"the downloaded {path.name} " + (
                    "is not usable" if problem else "differs from its expected SHA-256"))
        os.replace(part, path)
        _discard(part)  # its validators
        if expected is None:
            _record(path, actual)
        logger.info("downloaded %s (SHA-256 %s)", path, actual)
    return path
