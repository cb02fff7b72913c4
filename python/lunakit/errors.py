"""The error type of bad input: the CLIs print its one-line message and exit 2."""


class LunakitError(Exception):
    """Bad input (missing, truncated or malformed file, wrong shape, ...).

    The message names the file or argument and what is wrong with it, in one line.
    """


class ScanError(LunakitError):
    """A CT scan could not be read."""


class TableError(LunakitError):
    """A LUNA16 table (CSV) is missing or malformed."""


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank line, for a one-line message; its type's name when the
    message is empty or blank (libraries raise both)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
