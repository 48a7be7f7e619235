"""r2's error classes: every failure that a user can fix is an `R2Error` whose message names the file or field
and what to do; command-line entry points print it on one line (anything else is a bug and keeps its traceback).
Also the spelling of a config field as a flag, shared by every command and by the sweep's grid: its name (`flag`),
its value type and text parser (`field_type`, `scalar_parser`) and the one word for off (`OFF`)."""
import functools
import os
import sys
import types
import typing
import warnings
from pathlib import Path
from typing import Callable

__all__ = ["OFF", "R2Error", "AnnotationError", "CheckpointError", "ConfigError", "NotFoundError", "allows_off",
           "check_new_file", "check_new_folder", "command", "field_type", "flag", "not_a_folder", "one_line_warning", "scalar_kind", "scalar_parser"]


class R2Error(Exception):
    """A problem with the user's input, files or settings; the message says what to do."""


class ConfigError(R2Error, ValueError):
    """A setting that cannot run as given (a flag, a dataset name, a split); the message names it and the values it
    allows. Also a ValueError: code that caught the ValueError these settings raised before keeps working."""


class AnnotationError(R2Error, ValueError):
    """An annotation file (or record) that cannot be read: the message names FILE:LINE, the field and what to do."""


class NotFoundError(R2Error, FileNotFoundError):
    """A file or folder the user named (or that a setting points to) does not exist; the message says where r2
    looked and what to pass instead."""


class CheckpointError(R2Error):
    """A checkpoint that cannot be read or used as asked (not r2's or the authors' format, wrong features)."""


def flag(name: str) -> str:
    """The command-line flag of a config field, as commands and their error messages spell it: batch_size ->
    --batch-size."""
    return "--" + name.replace("_", "-")


# The one spelling of "off" for every setting that can be turned off: --lr-drop none (never drop the LR), --unit
# none (no rounding), --nms none, --preload none (stream). None, in a config, means "the recipe's value".
OFF = "none"


def allows_off(hint) -> bool:
    """Whether a config field of type `hint` takes OFF beside its numbers (`int | str | None`: --lr-drop, --unit)."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = typing.get_args(hint) if union else ()
    return str in args and any(a not in (str, type(None)) for a in args)


def scalar_kind(hint):
    """The scalar type of a field's type hint: `int | None` -> int, `int | str | None` -> int, `str` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def field_type(config: type, name: str):
    """The scalar type of a dataclass field (`scalar_kind` of its hint)."""
    return scalar_kind(typing.get_type_hints(config)[name])


def scalar_parser(config: type, name: str) -> Callable[[str], object]:
    """The argparse type of a non-bool field: its scalar type, or for a number that can be turned off (`int | str |
    None`: --lr-drop, --unit) that type or the word none."""
    kind = field_type(config, name)
    if not allows_off(typing.get_type_hints(config)[name]):
        return kind

    def number_or_off(text: str):
        return OFF if text == OFF else kind(text)

    number_or_off.__name__ = f"{kind.__name__} or {OFF}"  # argparse's "invalid int or none value: 'x'"
    return number_or_off


def check_new_file(path: Path, flag: str = "--out") -> Path:
    """`path` as a new output file: refused (ConfigError) when anything is there already (a file, a folder, a link,
    even a dangling one), since r2 never overwrites what it was not asked to replace."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{flag} {path}: a link to a missing file is there; pass a new path, or remove the link")
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; pass the path of a new file")
    if path.exists():
        raise ConfigError(f"{flag} {path}: exists; r2 never overwrites a file: pass a new path, or delete it first")
    return path


def not_a_folder(path: Path) -> bool:
    """Whether something other than a folder is at `path`: a file, or a link to nothing (a folder's place taken)."""
    return path.is_symlink() and not path.exists() or path.exists() and not path.is_dir()


def check_new_folder(path: Path, flag: str = "--out", ignore: tuple[str, ...] = ()) -> Path:
    """`path` as an output folder: refused (ConfigError) when it is a file, a link to a missing file, or a folder
    that holds anything but the names in `ignore`, since r2 never writes over what it was not asked to replace; a
    new or empty one is fine."""
    path = Path(path)
    if not_a_folder(path):
        raise ConfigError(f"{flag} {path}: is a file or a dangling link, not a folder; pass the path of a new folder")
    held = sorted(p.name for p in path.iterdir() if p.name not in ignore) if path.is_dir() else []
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise ConfigError(f"{flag} {path}: holds files already ({shown}); r2 writes only into a new or empty "
                          f"folder: pass another {flag}")
    return path


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` for command lines: each warning as one "warning: ..." line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def command(main: Callable[..., int | None]) -> Callable[..., int]:
    """`main` (a command line's `main(args) -> int`) with r2's error handling: an `R2Error` becomes one
    "error: ..." line on stderr and exit code 2; any other exception is a bug and keeps its traceback; warnings print
    as one "warning: ..." line each; a closed stdout pipe (`| head`) ends the command quietly; None is exit code 0."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        with warnings.catch_warnings():  # the caller's warning settings come back afterwards
            warnings.showwarning = one_line_warning
            try:
                code = main(*args, **kwargs)
            except R2Error as err:
                print(f"error: {err}", file=sys.stderr)
                return 2
            except BrokenPipeError:  # the reader (| head) closed the pipe: what was written stays, stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        return 0 if code is None else code

    return wrapped
