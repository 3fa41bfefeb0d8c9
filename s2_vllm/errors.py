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


def one_line(exc: BaseException, limit: int = 500, *, whole: bool = False) -> str:
    """An exception's message on one line, at most `limit` characters, or its type when it has none.

    Its first line; with `whole`, all its lines joined by '; ' (vLLM's and pydantic's messages
    put the cause on later lines), pydantic's "For further information" links dropped.
    """
    lines = [ln.strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("For further information")]
    text = "; ".join(lines if whole else lines[:1]) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cause_line(exc: BaseException) -> str:
    """One line naming the innermost cause (vLLM wraps worker failures in generic errors)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {one_line(current, 300, whole=True)}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return parts[-1] if len(parts) == 1 else f"{parts[0]} (caused by {parts[-1]})"


def plural(n: int, word: str) -> str:
    """'1 row', '2 rows'."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
