"""Prepare ADE20K (the 150-class SceneParsing release, ``ADEChallengeData2016``) in one command.

    python -m mit_semseg.data.ade20k --root ./data
    python -m mit_semseg.data.ade20k --root ./data --zip ~/Downloads/ADEChallengeData2016.zip

Downloads ``ADEChallengeData2016.zip`` (about 923 MB) from the URL the original used, into ``ROOT``
(resumable, see :class:`ResumableFetch`; SHA-256 recorded, see :mod:`mit_semseg.download`) unless
``--zip`` names a copy fetched elsewhere; unpacks it (atomically: a half-unpacked folder is never
taken for a complete one); writes the sample lists; and runs the dataset checker
(:mod:`mit_semseg.data.check`) on them. The result, which ``config/ade20k-*.yaml`` read with
``DATASET.root_dataset = ./data/``::

    ROOT/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
    ROOT/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_<8 digits>.png
    ROOT/training.odgt     20210 records   {"fpath_img": "ADEChallengeData2016/images/...",
    ROOT/validation.odgt    2000 records    "fpath_segm": ..., "width": W, "height": H}

Running it again reuses what is there: the archive is verified instead of downloaded, and an
unpacked folder is kept (``--force`` unpacks again).
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from mit_semseg.data.check import CheckReport, check_dataset
from mit_semseg.data.odgt import build_odgt, write_odgt
from mit_semseg.download import DownloadError, cached_download
from mit_semseg.files import atomic_write_text

__all__ = ["ADE20K_URL", "DEFAULT_ROOT", "FOLDER", "NUM_CLASS", "SPLITS", "PrepareError",
           "ResumableFetch", "config_opts", "main", "prepare", "unpack", "write_lists"]

logger = logging.getLogger(__name__)

ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
FOLDER = "ADEChallengeData2016"
NUM_CLASS = 150
DEFAULT_ROOT = "./data"  # the configs' DATASET.root_dataset
SPLITS = {"training": 20210, "validation": 2000}  # images per split in the official release
_PROG = "python -m mit_semseg.data.ade20k"
_CHUNK = 1 << 20


class PrepareError(RuntimeError):
    """The data cannot be prepared (bad archive, missing folders); the message is one line."""


def _member_path(name: str, archive: Path) -> PurePosixPath | None:
    """The path of an archive member inside ``FOLDER``, or None for members outside it."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise PrepareError(f"{archive}: unsafe member path {name!r}; not unpacking it")
    return path if path.parts[:1] == (FOLDER,) else None


class _Interrupted(Exception):
    """The transfer stopped after the request was answered; another request may finish it."""


class ResumableFetch:
    """A :data:`mit_semseg.download.Fetch` for large files on slow servers: it counts the
    bytes against the announced length, resumes a cut transfer with an HTTP ``Range`` request,
    and starts from zero when the server's file changed.

    Beside the part file it keeps ``<part>.validator``: the ETag, Last-Modified and total
    length of the file it holds the start of. A resumed request asks for the rest only if the
    file is unchanged (``If-Range``); a ``206`` answer whose validators or range differ from the
    recorded ones (a server that ignores ``If-Range``) is refused and the part thrown away, so
    two versions are never mixed.

    Args:
        timeout: seconds without data before a request is given up.
        attempts: requests made within one call while each one ends early.
    """

    def __init__(self, timeout: float = 60.0, attempts: int = 3) -> None:
        self.timeout = timeout
        self.attempts = max(1, attempts)

    def __call__(self, url: str, part: Path, progress: bool) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                self._request(url, part, progress)
                part.with_name(part.name + ".validator").unlink(missing_ok=True)
                return
            except _Interrupted as interruption:
                if attempt == self.attempts:
                    raise ConnectionError(str(interruption)) from interruption
                logger.warning("%s: %s (try %d of %d)", url, interruption, attempt + 1,
                               self.attempts)

    def _request(self, url: str, part: Path, progress: bool) -> None:
        """One request that completes ``part``, resuming it when it has validators."""
        record = part.with_name(part.name + ".validator")
        text = record.read_text(encoding="utf-8") if part.is_file() and record.is_file() else ""
        saved = (text.split("\n") + ["", ""])[:3]
        offset = part.stat().st_size if saved[0] or saved[1] else 0
        headers = {"User-Agent": "mit_semseg"}
        if offset:  # a server honouring If-Range sends the whole file if it changed
            headers.update({"Range": f"bytes={offset}-", "If-Range": saved[0] or saved[1]})
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                              timeout=self.timeout)
        except urllib.error.HTTPError as error:
            if offset and error.code == 416:  # the part is longer than the file
                _discard(part, record)
                raise _Interrupted("the file on the server is shorter; starting again") from error
            raise
        with response:
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", response.headers["Content-Range"] or "")
            validators = [response.headers["ETag"] or "", response.headers["Last-Modified"] or "",
                          match.group(2) if match else response.headers["Content-Length"] or ""]
            resumed = response.status == 206
            if resumed and (validators != saved or not match or int(match.group(1)) != offset):
                _discard(part, record)  # a server that ignored If-Range: another version
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
                    raise _Interrupted(" ".join(str(error).split()) or type(error).__name__
                                       ) from error
        if total is not None and part.stat().st_size != total:
            raise _Interrupted(f"connection closed after {part.stat().st_size} of {total} bytes")


def _discard(*files: Path) -> None:
    for file in files:
        file.unlink(missing_ok=True)


def unpack(zip_path: str | os.PathLike, root: str | os.PathLike, *, force: bool = False,
           progress: bool = True) -> Path:
    """Unpacks the archive's ``ADEChallengeData2016/`` into ``root``; returns that folder.

    The files go to a hidden folder first, which is renamed when everything is written. An
    existing ``root/ADEChallengeData2016`` is kept unless ``force``.

    Raises:
        PrepareError: not a zip file (e.g. a cut download), unsafe member paths, or no
            ``images``/``annotations`` folders for both splits.
    """
    zip_path, root = Path(zip_path), Path(root)
    target = root / FOLDER
    if target.is_dir() and not force:
        logger.info("%s exists; keeping it (--force unpacks the archive again)", target)
        return target
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise PrepareError(f"{zip_path}: cannot open as a zip archive ({error}); if it is a "
                           f"cut download, delete it and run again") from error
    with archive:
        members = [(info, path) for info in archive.infolist()
                   if (path := _member_path(info.filename, zip_path)) is not None]
        folders = {path.parts[1:3] for _, path in members if len(path.parts) > 3}
        missing = [f"{FOLDER}/{kind}/{split}/" for kind in ("images", "annotations")
                   for split in SPLITS if (kind, split) not in folders]
        if missing:
            raise PrepareError(f"{zip_path}: not the ADE20K SceneParsing archive (missing "
                               f"{', '.join(missing)})")
        staging = root / f".{FOLDER}.unpacking"
        if staging.exists():  # left by an interrupted run
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        with tqdm(total=sum(info.file_size for info, _ in members), unit="B", unit_scale=True,
                  unit_divisor=1024, desc=f"unpacking {zip_path.name}",
                  disable=not progress) as bar:
            for info, _ in members:
                archive.extract(info, staging)
                bar.update(info.file_size)
    if target.exists():  # force: swap the folders, then remove the old one
        old = root / f".{FOLDER}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staging / FOLDER, target)
        shutil.rmtree(old)
    else:
        os.replace(staging / FOLDER, target)
    shutil.rmtree(staging)
    logger.info("unpacked %s into %s", zip_path, target)
    return target


def write_lists(root: str | os.PathLike) -> dict[str, Path]:
    """Writes ``root/{training,validation}.odgt`` for ``root/ADEChallengeData2016``.

    Paths in the lists are relative to ``root`` (``DATASET.root_dataset``); ``width`` and
    ``height`` are the images' sizes.

    Returns:
        ``{split: list path}``.

    Raises:
        FileNotFoundError: a split folder is missing or an image has no annotation.
        ValueError: an image and its annotation differ in size, or a split has no image.
    """
    root = Path(root)
    lists = {}
    for split, expected in SPLITS.items():
        logger.info("%s: pairing images with annotations and reading their sizes", split)
        records = build_odgt(root / FOLDER / "images" / split,
                             root / FOLDER / "annotations" / split, root)
        if len(records) != expected:
            logger.warning("%s: %d images, the official release has %d (a partial or "
                           "modified copy?)", split, len(records), expected)
        lists[split] = root / f"{split}.odgt"
        write_odgt(lists[split], records)
        logger.info("wrote %s (%d records)", lists[split], len(records))
    return lists


def config_opts(root: str | os.PathLike) -> list[str]:
    """``KEY VALUE`` overrides pointing a config at data prepared in ``root`` (not needed for
    the default ``./data``, where ``config/ade20k-*.yaml`` look already)."""
    root = Path(root).as_posix()
    return ["DATASET.root_dataset", f"{root}/", "DATASET.list_train", f"{root}/training.odgt",
            "DATASET.list_val", f"{root}/validation.odgt"]


def prepare(root: str | os.PathLike = DEFAULT_ROOT, *, zip_path: str | os.PathLike | None = None,
            url: str = ADE20K_URL, force: bool = False, progress: bool = True,
            ) -> dict[str, CheckReport]:
    """Download (unless ``zip_path`` or an unpacked folder is there), unpack, list, check.

    Args:
        root: output folder (``DATASET.root_dataset``).
        zip_path: an archive fetched elsewhere; default ``root/ADEChallengeData2016.zip``,
            downloaded from ``url`` when missing.
        url: where to download the archive from (a mirror, for instance).
        force: unpack again over an existing folder.
        progress: show progress bars.

    Returns:
        The checker's report per split (``report.ok`` is False when a sample is bad).

    Raises:
        mit_semseg.download.DownloadError: the archive cannot be downloaded.
        PrepareError, OSError, ValueError: see :func:`unpack` and :func:`write_lists`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if force or not (root / FOLDER).is_dir():
        if zip_path is None:
            zip_path = cached_download(url, root / f"{FOLDER}.zip", fetch=ResumableFetch(),
                                       progress=progress)
        unpack(zip_path, root, force=force, progress=progress)
    else:
        logger.info("%s exists; keeping it (--force unpacks the archive again)", root / FOLDER)
    reports = {}
    for split, odgt in write_lists(root).items():
        logger.info("%s: checking every sample", split)
        reports[split] = check_dataset(odgt, NUM_CLASS, root)
    return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns 0 (ready), 1 (the checker found bad samples) or 2 (setup error)."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Download, unpack, list and check ADE20K (ADEChallengeData2016) for "
                    "config/ade20k-*.yaml.",
        epilog="Exit status: 0 ready, 1 the dataset checker found bad samples, 2 the data "
               "could not be prepared (download, archive or folder problem).",
    )
    parser.add_argument("--root", default=DEFAULT_ROOT,
                        help=f"output folder = DATASET.root_dataset (default {DEFAULT_ROOT})")
    parser.add_argument("--zip", dest="zip_path", default=None,
                        help="use this ADEChallengeData2016.zip instead of downloading it")
    parser.add_argument("--url", default=ADE20K_URL, help="download URL (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="unpack again even if ROOT/ADEChallengeData2016 exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    # progress on stdout; stderr gets only the one-line error (and tqdm's bars)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    root = Path(args.root)
    try:
        reports = prepare(root, zip_path=args.zip_path, url=args.url, force=args.force,
                          progress=not args.no_progress)
    except DownloadError as error:
        sys.stderr.write(f"{_PROG}: error: {error} (e.g. `wget -c {args.url}`), or use a copy "
                         f"stored elsewhere: {_PROG} --root {args.root} --zip PATH\n")
        return 2
    except (PrepareError, OSError, ValueError) as error:
        sys.stderr.write(f"{_PROG}: error: {' '.join(str(error).split())}\n")
        return 2
    for split, report in reports.items():
        sys.stdout.write(f"{split}: {report.format(max_problems=10).splitlines()[0]}\n")
        for problem in report.problems[:10]:
            sys.stdout.write(f"  PROBLEM {problem}\n")
    if not all(report.ok for report in reports.values()):
        sys.stdout.write(f"the checker found bad samples; full report: python -m "
                         f"mit_semseg.data.check {root / 'training.odgt'} --num-class "
                         f"{NUM_CLASS} --root {root}\n")
        return 1
    opts = "" if root.resolve() == Path(DEFAULT_ROOT).resolve() else " " + " ".join(
        config_opts(root))
    sys.stdout.write(f"ADE20K is ready in {root}; train with: python train.py --cfg "
                     f"config/ade20k-resnet50dilated-ppm_deepsup.yaml{opts}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
