"""The one exception type for mistakes a user can fix.

The entry script catches it once and prints its message as a single line with a non-zero
exit, so bad input never shows a traceback (programming errors still do, on purpose).
"""


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
