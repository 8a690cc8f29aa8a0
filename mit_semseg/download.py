"""Files fetched over HTTP(S) into a per-user cache, trusted only once checked.

The cache is ``$MIT_SEMSEG_HOME``, else ``mit_semseg`` beside :func:`torch.hub.get_dir`
(``~/.cache/torch/mit_semseg`` unless ``$TORCH_HOME`` or ``$XDG_CACHE_HOME`` say otherwise).
A file comes into ``<file>.part`` and takes its name once it passes its checks; its SHA-256 is
then recorded in ``<file>.sha256`` (``sha256sum`` format) and compared on every later use.
Files are fetched whole by :func:`torch.hub.download_url_to_file` (:func:`fetch_whole`), which
compares no byte count with ``Content-Length``: the caller's ``check`` (weights load as the
expected model's) is what keeps a cut file from being trusted. A caller may bring its own
transfer (``fetch``): the ADE20K archive (923 MB) comes by a resumable one
(:class:`mit_semseg.data.ade20k.ResumableFetch`).
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import logging
import os
import re
import urllib.error
from collections.abc import Callable
from pathlib import Path

import torch.hub

from mit_semseg.files import atomic_write_text, exclusive_lock

__all__ = ["ENV_HOME", "ENV_SHA256", "DownloadError", "Fetch", "cache_root", "cached_download",
           "expected_sha256", "fetch_whole", "sha256_file"]

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


# (url, destination, progress bar) -> fills the destination with the resource
Fetch = Callable[[str, Path, bool], None]


def fetch_whole(url: str, part: Path, progress: bool) -> None:
    """:data:`Fetch` in one request through :func:`torch.hub.download_url_to_file`."""
    for stale in part.parent.glob(glob.escape(part.name) + ".*.partial"):
        stale.unlink()  # torch.hub's temporary file, left by a killed process
    torch.hub.download_url_to_file(url, str(part), progress=progress)


def _fetch(url: str, path: Path, part: Path, fetch: Fetch, progress: bool) -> None:
    logger.info("downloading %s to %s", url, path)
    try:
        fetch(url, part, progress)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise DownloadError(f"cannot download {url} ({_one_line(error)}); fetch it some other "
                            f"way and save it as {path.resolve()}",
                            summary=f"cannot download {path.name}") from error


def cached_download(url: str, path: str | os.PathLike, *, sha256: str | None = None,
                    check: Callable[[Path], object] | None = None,
                    fetch: Fetch = fetch_whole, progress: bool = True) -> Path:
    """``path``, compared with its expected SHA-256 (:func:`expected_sha256`); downloaded from
    ``url`` when missing or different. A file without a digest is recorded once ``check``
    accepts it. Concurrent callers wait for one download (a lock file, deleted after). In a
    read-only folder (a shared, pre-filled cache) a present file is only compared.

    Args:
        check: raises if a file is not what it should be (another model's weights, cut
            short).
        fetch: the transfer into ``<path>.part`` (default :func:`fetch_whole`); one that
            resumes keeps what it needs beside the part file.
        progress: a progress bar while downloading.

    Raises:
        DownloadError: the download failed (a resumable ``fetch`` keeps its ``.part``), or a
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
        _fetch(url, path, part, fetch, progress)
        actual = sha256_file(part)
        problem = _problem(check, part) if expected is None else None
        if problem or actual != (expected or actual):
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url} sent a file that is not usable ({problem}); nothing was saved at "
                f"{path.resolve()}, the next run downloads it again" if problem else
                f"{url} sent a file with SHA-256 {actual}, expected {expected} ({source}); "
                f"nothing was saved at {path.resolve()} (if the file changed on the server on "
                f"purpose, delete {_beside(path, '.sha256')} to accept the new one)",
                summary=f"the downloaded {path.name} " + (
                    "is not usable" if problem else "differs from its expected SHA-256"))
        os.replace(part, path)
        if expected is None:
            _record(path, actual)
        logger.info("downloaded %s (SHA-256 %s)", path, actual)
    return path
