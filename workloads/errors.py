"""The two kinds of failure a workload reports: the user's mistake, or the storage's."""


class ConfigError(ValueError):
    """A value the user can fix: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


class WorkloadError(RuntimeError):
    """The run could not complete (I/O error, no space, a worker died). One line, no traceback."""


class Interrupted(BaseException):
    """The run was stopped by a signal. `partial` holds what was measured before it, if anything.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """

    def __init__(self, signum: int, partial=None):
        self.signum, self.partial = signum, partial
        super().__init__(f"interrupted by signal {signum}")
