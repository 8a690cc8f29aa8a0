"""Resumable, verified HTTP(S) downloads into a per-user cache.

Weights and the ADE20K archive come over plain http from servers that are sometimes slow or
unreachable, and their publishers give no checksums. So every file fetched here:

* goes to ``<file>.part`` first (with a tqdm progress bar) and is renamed onto ``<file>`` only
  when complete, so an interrupted transfer never leaves a file that looks finished;
* resumes an existing ``.part`` with an HTTP ``Range`` request (guarded by ``If-Range``, so a
  file that changed on the server restarts from zero instead of mixing two versions), and
  retries a connection dropped midway as long as bytes keep arriving;
* is hashed (SHA-256) when first downloaded; the digest is written beside it as
  ``<file>.sha256`` (``sha256sum`` format) and checked on every later use, so a corrupted or
  swapped file is detected and fetched again.

The expected digest is, in this order: the ``sha256`` argument, an entry of the environment
variable ``MIT_SEMSEG_SHA256`` (``NAME=HEX`` pairs separated by commas or spaces, ``NAME``
matching the end of the file's path, e.g. ``resnet50-imagenet.pth=ab12...`` or
``ade20k-resnet50dilated-ppm_deepsup/encoder_epoch_20.pth=cd34...``), or the ``<file>.sha256``
file (written here on first download, or placed there by the user before it). Without any, the
first download is trusted and recorded.

The cache root is ``$MIT_SEMSEG_HOME``, else ``mit_semseg`` inside torch's cache folder
(``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from mit_semseg.files import atomic_write_text

__all__ = [
    "ENV_HOME",
    "ENV_SHA256",
    "DownloadError",
    "cache_root",
    "cached_download",
    "expected_sha256",
    "sha256_file",
]

logger = logging.getLogger(__name__)

ENV_HOME = "MIT_SEMSEG_HOME"
ENV_SHA256 = "MIT_SEMSEG_SHA256"

_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """A download failed or a file failed its SHA-256 check (the message is one line)."""


def cache_root() -> Path:
    """``$MIT_SEMSEG_HOME``, else ``<torch cache>/mit_semseg`` (see the module docstring)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(torch_home).expanduser() / "mit_semseg"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 digest of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _checked_digest(text: str, source: str) -> str:
    digest = text.strip().lower()
    if not _HEX64.fullmatch(digest):
        raise DownloadError(f"{source}: {text.strip()!r} is not a SHA-256 digest (64 hex digits)")
    return digest


def _env_digest(path: Path) -> str | None:
    """The ``MIT_SEMSEG_SHA256`` entry whose name is the longest suffix of ``path``."""
    best, best_parts = None, 0
    for item in re.split(r"[,;\s]+", os.environ.get(ENV_SHA256, "").strip()):
        if not item:
            continue
        name, sep, digest = item.rpartition("=")
        if not sep or not name:
            raise DownloadError(f"{ENV_SHA256}: entry {item!r} is not NAME=SHA256")
        parts = Path(name).parts
        if path.parts[-len(parts):] == parts and len(parts) > best_parts:
            best, best_parts = _checked_digest(digest, f"{ENV_SHA256} entry {name}"), len(parts)
    return best


def expected_sha256(path: str | os.PathLike, sha256: str | None = None
                    ) -> tuple[str | None, str]:
    """The digest ``path`` must have, and where it comes from (for messages).

    Returns:
        ``(digest or None, source)``: from ``sha256``, ``$MIT_SEMSEG_SHA256`` or
        ``<path>.sha256`` (first found); ``(None, "")`` when none is known.

    Raises:
        DownloadError: a malformed digest, naming its source.
    """
    path = Path(path)
    if sha256:
        return _checked_digest(sha256, "sha256 argument"), "given by the caller"
    from_env = _env_digest(path)
    if from_env:
        return from_env, f"from ${ENV_SHA256}"
    record = _record_path(path)
    if record.is_file():
        words = record.read_text(encoding="utf-8").split()
        return _checked_digest(words[0] if words else "", str(record)), f"recorded in {record}"
    return None, ""


def _write_record(path: Path, digest: str) -> None:
    atomic_write_text(_record_path(path), f"{digest}  {path.name}\n")


def _one_line(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason  # the socket error, without urllib's "<urlopen error ...>" wrapper
    return " ".join(str(error).split()) or type(error).__name__


class _Interrupted(Exception):
    """The connection broke off after the response began (worth resuming)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(_one_line(error))
        self.error = error


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _discard(part: Path) -> None:
    for file in (part, _validator_file(part)):
        if file.exists():
            file.unlink()


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
    return int(match.group(1)) if match else None


def _transfer_once(url: str, part: Path, progress: bool, timeout: float) -> None:
    """One request: appends to ``part`` (resuming) or rewrites it.

    Raises:
        _Interrupted: the body ended early or the connection broke while reading it.
        OSError, http.client.HTTPException: no usable response (offline, HTTP error).
    """
    offset = part.stat().st_size if part.is_file() else 0
    validator_file = _validator_file(part)
    validator = validator_file.read_text(encoding="utf-8") if validator_file.is_file() else ""
    headers = {"User-Agent": "mit_semseg"}
    if offset and validator:
        # If-Range: the server sends the rest only if the file is unchanged, else all of it.
        headers.update({"Range": f"bytes={offset}-", "If-Range": validator})
    resuming = "Range" in headers
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as error:
        if not (resuming and error.code == 416):
            raise
        response = None  # "range not satisfiable": our part is longer than the file
    resumed = resuming and response is not None and response.status == 206
    if resuming and (response is None or (resumed and _range_start(response) != offset)):
        if response is not None:
            response.close()
        logger.info("%s: the server cannot resume %s; starting again", url, part)
        _discard(part)
        return _transfer_once(url, part, progress, timeout)
    with response:
        if not resumed:  # a full answer: no range asked, range ignored, or the file changed
            offset = 0
            new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if new_validator:
                validator_file.write_text(new_validator, encoding="utf-8")
            elif validator_file.exists():
                validator_file.unlink()
        length = response.headers.get("Content-Length") or ""
        total = offset + int(length) if length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=not progress, leave=False,
        ) as bar:
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise _Interrupted(error) from error
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Interrupted(ConnectionError(f"connection closed after {size} of {total} bytes"))


def _transfer(url: str, part: Path, progress: bool, timeout: float, attempts: int) -> None:
    """Fills ``part`` with the whole resource, resuming up to ``attempts`` times after drops."""
    for attempt in range(1, attempts + 1):
        try:
            _transfer_once(url, part, progress, timeout)
            return
        except _Interrupted as interruption:
            if attempt == attempts:
                raise interruption.error from interruption
            logger.warning("%s: %s at byte %d; resuming (try %d of %d)", url, interruption,
                           part.stat().st_size if part.is_file() else 0, attempt + 1, attempts)


def _verify_read_only(path: Path, sha256: str | None) -> Path:
    """Checks ``path`` against its expected digest, if one is known, without writing."""
    expected, source = expected_sha256(path, sha256)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise DownloadError(
                f"{path}: SHA-256 {actual} differs from {expected} ({source}) and its folder is "
                f"read-only, so it cannot be fetched again; replace it with a good copy")
    return path


def cached_download(url: str, path: str | os.PathLike, *, sha256: str | None = None,
                    progress: bool = True, timeout: float = 60.0, attempts: int = 3) -> Path:
    """``path``, verified against its expected SHA-256; downloaded from ``url`` when missing.

    A present file is hashed and compared with the expected digest (see the module docstring);
    without one its digest is recorded. A file that does not match is deleted and fetched
    again; a fetched file that does not match raises and leaves nothing at ``path``. Several
    processes may call this for the same ``path`` at once (a lock file serialises them). In a
    read-only folder (a shared, pre-filled cache) a present file is only checked.

    Args:
        url: http(s) URL.
        path: where the file lives in the cache.
        sha256: expected hex digest, if the caller knows it.
        progress: show a tqdm progress bar while downloading.
        timeout: seconds without data before a connection is given up.
        attempts: requests made when a transfer breaks off after receiving data.

    Returns:
        ``path``.

    Raises:
        DownloadError: the download failed (offline, HTTP error, cut off; the ``.part`` file is
            kept and the next call resumes it) or the file's digest differs from the expected
            one. The message is one line naming the URL and the path to put the file at.
    """
    path = Path(path)
    if path.is_file() and not os.access(path.parent, os.W_OK):
        return _verify_read_only(path, sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        expected, source = expected_sha256(path, sha256)
        if path.is_file():
            actual = sha256_file(path)
            if expected is None:
                _write_record(path, actual)
                logger.info("%s: recorded SHA-256 %s", path, actual)
                return path
            if actual == expected:
                return path
            logger.warning("%s: SHA-256 %s differs from %s (%s); the file is corrupted or was "
                           "replaced, downloading it again", path, actual, expected, source)
            path.unlink()
        part = path.with_name(path.name + ".part")
        logger.info("downloading %s to %s", url, path)
        try:
            _transfer(url, part, progress, timeout, max(1, attempts))
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise DownloadError(
                f"cannot download {url} ({_one_line(error)}); fetch it some other way and save "
                f"it as {path.resolve()}"
            ) from error
        actual = sha256_file(part)
        if expected is not None and actual != expected:
            _discard(part)
            raise DownloadError(
                f"{url} sent a file with SHA-256 {actual}, expected {expected} ({source}); "
                f"nothing was saved at {path.resolve()} (if the file changed on the server on "
                f"purpose, delete {_record_path(path)} to accept the new one)"
            )
        os.replace(part, path)
        _discard(part)  # its validator
        if expected is None or not _record_path(path).is_file():
            _write_record(path, actual)
        logger.info("downloaded %s (SHA-256 %s)", path, actual)
    return path
