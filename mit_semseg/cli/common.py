"""What the four scripts share: the command line, exit codes, logging and config translations.

Every script takes ``--cfg FILE``, ``--gpus DEVICES`` (``--gpu`` is the same flag, the
original's eval/test spelling) and trailing ``KEY VALUE`` config overrides. A ``main(argv)``
returns its exit code:

* 0: everything ran;
* 1 (:data:`EXIT_SOME_FAILED`): it ran, but some inputs failed (reported by name);
* 2 (:data:`EXIT_USAGE`): nothing ran because of the command line, the config or a missing
  file, reported as one line ``script.py: error: ...`` on stderr (as argparse does).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

import torch

from mit_semseg.cli.devices import resolve_devices
from mit_semseg.engine.inference import TrainedModel

__all__ = [
    "DEFAULT_CFG",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "SETUP_ERRORS",
    "UsageError",
    "script_parser",
    "setup_logging",
    "single_device",
    "trained_model",
    "usage_error",
]

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CFG = "config/ade20k-resnet50dilated-ppm_deepsup.yaml"


class UsageError(ValueError):
    """A bad command line (flag, value or combination)."""


# What a user fixes (bad config, key, device, missing file); config.ConfigError, UsageError and
# NotSupportedCliException are ValueErrors.
SETUP_ERRORS = (FileNotFoundError, ValueError)

LOG_FORMAT = "[%(asctime)s %(levelname)s %(filename)s line %(lineno)d %(process)d] %(message)s"


class _Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of exiting, so that ``main`` returns the code."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def script_parser(prog: str, description: str, devices_help: str) -> argparse.ArgumentParser:
    """A parser with ``--cfg``, ``--gpus``/``--gpu`` and the trailing ``opts``; the script adds
    its own flags (before the overrides on the command line)."""
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--cfg", default=DEFAULT_CFG, metavar="FILE", help="YAML config file")
    parser.add_argument("--gpus", "--gpu", dest="gpus", default=None, metavar="DEVICES",
                        help=f"{devices_help}; default: the config's DEVICE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def usage_error(prog: str, error: BaseException) -> int:
    """Report a setup error as one line on stderr; return :data:`EXIT_USAGE`."""
    print(f"{prog}: error: {error}", file=sys.stderr)
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
