"""What the four scripts share: the command line, exit codes, logging and config translations.

Every script takes ``--cfg FILE|NAME``, ``--gpus DEVICES`` (``--gpu`` is the same flag, the
original's eval/test spelling) and trailing ``KEY VALUE`` config overrides. A ``main(argv)``
returns its exit code, the same in all four scripts:

* 0: everything ran;
* 1 (:data:`EXIT_SOME_FAILED`): it ran, but some inputs failed (reported by name), or the run
  stopped part-way (a worker failed, the disk filled up);
* 2 (:data:`EXIT_USAGE`): nothing ran because of the command line, the config, the data or a
  file, reported as one line ``script.py: error: ...`` on stderr (as argparse does) naming
  the file or config key and the fix. :mod:`mit_semseg.cli.preflight` finds these before any
  slow work.

Each script is also installed as a console command (``mit-semseg-train``, ``mit-semseg-eval``,
``mit-semseg-eval-multipro``, ``mit-semseg-test``) running the same ``main``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from mit_semseg.cli.devices import resolve_devices
from mit_semseg.cli.launch import program_name
from mit_semseg.config import defaults, packaged_configs
from mit_semseg.download import DownloadError
from mit_semseg.inference.trained_model import TrainedModel
from mit_semseg.models.zoo import list_models

__all__ = [
    "DEFAULT_CFG",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "SETUP_ERRORS",
    "UsageError",
    "print_error",
    "program_name",
    "script_parser",
    "setup_logging",
    "single_device",
    "trained_model",
    "usage_error",
]

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CFG = "ade20k-resnet50dilated-ppm_deepsup"


class UsageError(ValueError):
    """A bad command line (flag, value or combination)."""


# What a user fixes: a bad config, key, device, file or folder (config.ConfigError, UsageError,
# preflight.SetupError and NotSupportedCliException are ValueErrors; FileNotFoundError and
# PermissionError are OSErrors) or a download that failed (offline, bad URL, wrong hash).
SETUP_ERRORS = (OSError, ValueError, DownloadError)

LOG_FORMAT = "[%(asctime)s %(levelname)s %(filename)s line %(lineno)d %(process)d] %(message)s"

_EXIT_STATUS_HELP = """\
exit status:
  0  everything ran
  1  it ran, but some inputs failed (each is reported by name) or the run stopped part-way
  2  nothing ran: a bad command line, config key, data list or file, reported as one line
     "{prog}: error: ..." that names the file or key and the fix"""


class _Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of exiting, so that ``main`` returns the code; flags
    may stand before, between or after the ``KEY VALUE`` overrides."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        return self.parse_intermixed_args(args, namespace)


def _config_help() -> str:
    names = "\n".join(f"    {name}" for name in packaged_configs())
    return (f"config:\n  --cfg takes a YAML file or the name of a packaged config:\n{names}\n"
            "  KEY VALUE pairs override single config keys (before or after the flags).\n"
            f"  Every key, its default and its meaning: {Path(defaults.__file__).resolve()}\n"
            "  (in a clone: mit_semseg/config/defaults.py; guides in docs/).")


def script_parser(prog: str, description: str, devices_help: str,
                  examples: Sequence[str] = (), released_models: bool = False
                  ) -> argparse.ArgumentParser:
    """A parser with ``--cfg``, ``--gpus``/``--gpu`` and the ``KEY VALUE`` overrides ``opts``;
    the script adds its own flags, which, like these, may come before, between or after the
    overrides on the command line.

    With ``released_models`` (the inference scripts) it also takes ``--model NAME``, a model of
    :mod:`mit_semseg.models.zoo` (see :mod:`mit_semseg.cli.model_setup`), and ``--cfg`` is
    ``None`` when not given, so that the model's own config can take its place; and
    ``--verbose`` (see :func:`usage_error`).

    ``--help`` ends with ``examples`` (``{prog}`` stands for the command, e.g.
    ``python train.py`` or ``mit-semseg-train``), the packaged configs, where every config key
    is documented, and the exit statuses.
    """
    command = f"python {prog}" if prog.endswith(".py") else prog
    epilog = "\n\n".join(
        (["examples:\n" + "\n".join("  " + e.format(prog=command) for e in examples)]
         if examples else [])
        + [_config_help(), _EXIT_STATUS_HELP.format(prog=prog)])
    parser = _Parser(prog=prog, description=description, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if released_models:
        parser.add_argument("--cfg", default=None, metavar="FILE|NAME",
                            help="YAML config file, or the name of a packaged config; with "
                                 f"--model, that model's config (default: {DEFAULT_CFG})")
        parser.add_argument("--model", default=None, metavar="NAME",
                            help="run a model released with the original instead of DIR's "
                                 "weights, downloaded into the cache on first use; one of: "
                                 f"{', '.join(list_models())} (default: none)")
        parser.add_argument("--verbose", action="store_true",
                            help="errors in full: a failed download names the URLs and the "
                                 "network error (default: one short line)")
    else:
        parser.add_argument("--cfg", default=DEFAULT_CFG, metavar="FILE|NAME",
                            help="YAML config file, or the name of a packaged config "
                                 "(default: %(default)s)")
    parser.add_argument("--gpus", "--gpu", dest="gpus", default=None, metavar="DEVICES",
                        help=f"{devices_help} (default: the config's DEVICE, itself \"auto\" "
                             "by default: GPU 0 if there is one, else the CPU)")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides (default: none)")
    return parser


def print_error(prog: str, error: BaseException | str) -> None:
    """``prog: error: message`` as one line on stderr (a message spanning lines is joined)."""
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(f"{prog}: error: {message}", file=sys.stderr)


def usage_error(prog: str, error: BaseException, verbose: bool = True) -> int:
    """Report a setup error as one line on stderr; return :data:`EXIT_USAGE`. Without
    ``verbose`` a failed download gives its short form (``DownloadError.summary``)."""
    print_error(prog, error if verbose or not isinstance(error, DownloadError) else error.summary)
    return EXIT_USAGE


def single_device(spec: str, hint: str = "") -> torch.device:
    """The one device of ``--gpus`` / ``DEVICE`` text (``hint`` ends the error message)."""
    devices = resolve_devices(spec)
    if len(devices) != 1:
        raise UsageError(f"--gpus takes one device, got {spec!r}{hint}")
    return devices[0]


def setup_logging(output_dir: str | None = None, rank: int = 0,
                  filename: str = "log.txt") -> None:
    """Configure the root logger for a script: console, plus ``output_dir/filename``.

    Rank 0 logs at INFO; other ranks only report warnings and errors, to the console, so that
    a multi-process run prints each message once and only rank 0 writes the log file.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    console = logging.StreamHandler(stream=sys.stdout)
    console.setFormatter(formatter)
    root.addHandler(console)
    if rank == 0 and output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(output_dir, filename), encoding="utf-8")
        log_file.setFormatter(formatter)
        root.addHandler(log_file)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def setup_logger(distributed_rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    """The original's ``mit_semseg.utils.setup_logger``: console logging, INFO on rank 0
    (``filename`` was ignored by the original too)."""
    del filename
    setup_logging(None, distributed_rank)
    return logging.getLogger("mit_semseg")


def trained_model(cfg: Any, checkpoint: str) -> TrainedModel:
    """The model a config describes, with the weights ``cfg.DIR/{encoder,decoder}_<checkpoint>``."""
    return TrainedModel(
        arch_encoder=cfg.MODEL.arch_encoder,
        arch_decoder=cfg.MODEL.arch_decoder,
        num_class=cfg.DATASET.num_class,
        weights_dir=cfg.DIR,
        checkpoint=checkpoint,
        fc_dim=cfg.MODEL.fc_dim,
        fast_inference=cfg.MODEL.fast_inference,
    )
