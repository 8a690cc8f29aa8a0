"""The configs shipped inside the package, and ``--cfg`` values that name one of them.

The YAML recipes live in ``mit_semseg/config/files/`` so that a pip-installed package has them;
the repository's ``config/`` is a link to that folder. ``--cfg`` takes a path or a config's
name, so the same command works from a clone and from an installed package:

* an existing file is used as given;
* a bare name, with or without ``.yaml`` (``ade20k-resnet50dilated-ppm_deepsup``), is the
  packaged config of that name;
* ``config/<name>.yaml`` (the README's form) that does not exist relative to the current
  folder is the packaged config of that name too: a pip-installed user has no ``config/``,
  and on Windows a clone may hold the link as a plain text file.

Any other missing path is an error: a user's own file that is not found must never be
replaced silently by a packaged recipe of the same name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PACKAGED_DIR", "packaged_configs", "resolve_config_file"]

PACKAGED_DIR = Path(__file__).resolve().with_name("files")
_SUFFIXES = (".yaml", ".yml")
# the README's relative form, kept working wherever the command is run
_REPO_FOLDER = "config"


def packaged_configs() -> dict[str, Path]:
    """Name (file stem) -> path of every config shipped with the package, sorted by name."""
    return {path.stem: path for path in sorted(PACKAGED_DIR.glob("*.yaml"))}


def resolve_config_file(spec: str | os.PathLike) -> Path:
    """The YAML file that ``--cfg spec`` means (see the module docstring).

    Raises:
        FileNotFoundError: no such file and no packaged config of that name; the message lists
            the packaged names.
    """
    path = Path(spec)
    if path.is_file():
        return path
    name = path.stem if path.suffix in _SUFFIXES else path.name
    folders = path.parts[:-1]
    names_packaged = not folders or (folders == (_REPO_FOLDER,) and path.suffix in _SUFFIXES)
    packaged = packaged_configs()
    if names_packaged and name in packaged:
        return packaged[name]
    raise FileNotFoundError(
        f"config file not found: {os.fspath(spec)} (give a YAML path or the name of a "
        f"packaged config: {', '.join(packaged)})"
    )
