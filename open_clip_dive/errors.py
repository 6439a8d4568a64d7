"""User-facing errors: one clear line that names the flag or file and the fix."""


class DiveUsageError(ValueError):
    """Bad flags, files or data; main() prints the message and exits with status 2."""
