"""``mit-semseg-app`` / ``python -m mit_semseg.app``: start the page (see :mod:`mit_semseg.app`).

Examples::

    mit-semseg-app                                   # the released models, on 127.0.0.1:8000
    mit-semseg-app --run ckpt/my_run --run ckpt/other_run --port 8080
    mit-semseg-app --host 0.0.0.0                    # reachable from other machines (a warning)

Exit status: 0 after Ctrl-C, 2 when it cannot start (a bad ``--run`` folder, the app's
packages missing, the port taken), with one line ``mit-semseg-app: error: ...``.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import socket
import sys
from collections.abc import Sequence

import torch

from mit_semseg.app.catalog import released_choices, run_choices
from mit_semseg.app.photos import Limits
from mit_semseg.config import ConfigError

__all__ = ["APP_MODULES", "main", "parse_args"]

PROG = "mit-semseg-app"
# the optional extra: pip install 'mit_semseg[app]'
APP_MODULES = ("starlette", "uvicorn", "python_multipart")

logger = logging.getLogger("mit_semseg.app")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A web page to look at what a model sees: upload a photo, see the "
                    "prediction over it, hover a pixel, compare two models.",
        epilog="examples:\n  mit-semseg-app\n  mit-semseg-app --run ckpt/my_run --port 8080\n"
               "  mit-semseg-app --host 0.0.0.0   # reachable from other machines\n\n"
               "The page lists the released models (downloaded into the cache on first use)\n"
               "and every --run folder (a training run's DIR: its config.yaml and its\n"
               "encoder/decoder_epoch_N.pth files). Install the page's packages with\n"
               "pip install 'mit_semseg[app]'. Docs: docs/app.md.")
    parser.add_argument("--run", action="append", default=[], metavar="DIR",
                        help="a training run to offer (repeatable; default: none)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--device", default="auto",
                        help='"cpu", "cuda", "cuda:N" or "auto" (default: GPU 0 if there is '
                             "one, else the CPU)")
    parser.add_argument("--max-megapixels", type=float, default=40.0, metavar="N",
                        help="largest photo taken, width x height (default: %(default)g)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="N",
                        help="largest photo file taken, in MB of 10^6 bytes (default: "
                             "%(default)g)")
    parser.add_argument("--keep-results", type=int, default=16, metavar="N",
                        help="results kept for downloads (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: choose 0..65535")
    if args.max_megapixels <= 0 or args.max_upload_mb <= 0 or args.keep_results < 1:
        parser.error("--max-megapixels and --max-upload-mb must be positive, --keep-results "
                     "at least 1")
    return args


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f'--device {spec}: use "cpu", "cuda", "cuda:N" or "auto"') from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device here; use --device cpu")
    return device


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error}); choose "
                      "another --port (0 picks a free one)") from None
    return sock


def _fail(message: object) -> int:
    text = " ".join(str(message).split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s] %(message)s")
    missing = [name for name in APP_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        return _fail(f"the page needs {', '.join(missing)}: pip install 'mit_semseg[app]'")
    # the web packages are an optional extra: imported only once they are known to be there
    import uvicorn

    from mit_semseg.app.server import create_app

    try:
        device = _device(args.device)
        choices = run_choices(args.run, device) + released_choices()
        limits = Limits(max_bytes=int(args.max_upload_mb * 1e6),
                        max_pixels=int(args.max_megapixels * 1e6))
        app = create_app(choices, device, limits, keep_results=args.keep_results)
        sock = _listen(args.host, args.port)
    except (OSError, ValueError, ConfigError) as error:
        return _fail(error)
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:  # every interface: name this machine
        host = socket.gethostname()
    if not _is_loopback(args.host):
        logger.warning("--host %s: the page is reachable from other machines, without any "
                       "login; anyone who reaches it can run your models on their photos",
                       args.host)
    print(f"{PROG}: {len(choices)} models on {device}; open {_url(host, port)} "
          "(Ctrl-C to stop)", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
