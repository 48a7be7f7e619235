"""r2's error classes: every failure that a user can fix is an `R2Error` whose message names the file or field
and what to do; command-line entry points print it on one line (anything else is a bug and keeps its traceback)."""
import sys

__all__ = ["R2Error", "AnnotationError", "CheckpointError", "ConfigError", "NotFoundError", "one_line_warning"]


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


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` for command lines: each warning as one "warning: ..." line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
