"""User-facing errors: one clear line that names the flag or file and the fix."""


class DiveUsageError(ValueError):
    """Bad flags, files or data; main() prints the message and exits with status 2."""


class DiveRunError(RuntimeError):
    """The run cannot go on (a diverged loss, a failed save); main() prints the message and exits with status 1.
    Raised after the last good checkpoint is kept, never before it is safe."""
