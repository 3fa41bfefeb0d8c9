"""User-facing errors: one line each, shown without a traceback by the CLI."""


class UserError(Exception):
    """A problem with the user's input, config or files (exit code 2)."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration is invalid; raised before any model loads."""


class InputError(UserError):
    """An input data file cannot be read or joined."""


class CheckpointError(UserError):
    """The checkpoint cannot be used as asked (locked, changed config, damaged)."""


class EngineError(Exception):
    """The engine could not start or died mid-run (exit code 3)."""

    exit_code = 3


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def plural(n: int, word: str) -> str:
    """'1 row', '2 rows'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
