"""Verified downloads into a local cache folder: CLIP weights, the authors' zoo checkpoints, annotation files.

One rule for all of them: a file is used only when its SHA-256 matches (a full digest, or the 8-hex prefix that a
release puts in its file name); a download goes to a temporary file beside the target and is renamed into place
only once verified, so an interrupted or corrupt download never leaves a file that looks finished.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.request import urlopen

from r2.errors import R2Error

__all__ = ["file_sha256", "fetch"]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, target: Path, sha256: str, *, what: str, alternative: str,
          error: type[R2Error] = R2Error) -> Path:
    """`target`, downloaded from `url` first if missing; its SHA-256 must start with `sha256` (full or prefix).

    Failures raise `error` with a one-line message that names `what`, the URL or file, and `alternative` (what the
    user can do instead, e.g. "pass --clip PATH to a local checkpoint").
    """
    target = Path(target)
    if target.is_file():
        actual = file_sha256(target)
        if not actual.startswith(sha256):
            raise error(f"{target} has SHA-256 {actual[:len(sha256)]}, expected {sha256} (from {url}): delete the "
                        f"file to download it again, or {alternative}")
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as partial:
            partial_path = Path(partial.name)
    except OSError as err:
        raise error(f"cannot write to {target.parent} ({err.strerror or err}) to download {what}: choose a writable "
                    f"folder, or {alternative}") from None
    try:
        print(f"downloading {what} from {url} to {target}", file=sys.stderr)
        try:
            with urlopen(url, timeout=60) as source, open(partial_path, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        except OSError as err:  # URLError (offline), HTTP errors, timeouts, connection resets, disk full
            raise error(f"could not download {what} from {url} ({getattr(err, 'reason', None) or err}); "
                        f"{alternative}") from None
        actual = file_sha256(partial_path)
        if not actual.startswith(sha256):
            raise error(f"downloaded {url} has SHA-256 {actual[:len(sha256)]}, expected {sha256}: try again, or "
                        f"{alternative}")
        os.replace(partial_path, target)
    finally:
        partial_path.unlink(missing_ok=True)
    return target
