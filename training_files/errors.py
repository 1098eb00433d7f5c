"""The one exception type for mistakes a user can fix.

The entry script catches it once and prints its message as a single line with a non-zero
exit, so bad input never shows a traceback (programming errors still do, on purpose).
"""


class PipelineError(Exception):
    """A user-fixable problem: bad input, missing data, unusable checkpoint."""
