"""The one exception type for mistakes a user can fix, and how a command ends on it or on Ctrl-C.

Each command catches it once and prints its message as a single line with a non-zero exit, so
bad input never shows a traceback (programming errors still do, on purpose); Ctrl-C ends with
one line and exit 130, as a shell reports SIGINT.
"""

import sys

EXIT_ERROR, EXIT_INTERRUPTED = 1, 130


class PipelineError(Exception):
    """A user-fixable problem: bad input, missing data, unusable checkpoint."""


def raised_by_ctrl_c(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt lies behind `exc`.

    Ctrl-C while a C extension initialises does not arrive as KeyboardInterrupt: the import
    fails with ImportError("initialization failed") chained to it, and gymnasium re-raises that
    as DependencyNotInstalled ("MuJoCo is not installed") when the first MuJoCo env is made.
    Such an error is the user's interrupt, not a bug or a broken install."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def error_line(exc: PipelineError) -> str:
    """The one line a PipelineError prints: "ERROR: ..." (QUICKSTART's own messages, and the
    pipeline's "Pipeline failed: ...", carry their prefix already)."""
    message = str(exc)
    return message if message.startswith(("ERROR:", "Pipeline failed:")) else f"ERROR: {message}"


def exit_code(exc: BaseException, interrupted: str) -> int:
    """One line on stderr and the exit code for what ended a command's main: `interrupted`
    and 130 for Ctrl-C (chained or not), "ERROR: ..." and 1 for a PipelineError. Anything
    else is a bug and is raised again, traceback and all."""
    if raised_by_ctrl_c(exc):
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, PipelineError):
        print(error_line(exc), file=sys.stderr)
        return EXIT_ERROR
    raise exc
