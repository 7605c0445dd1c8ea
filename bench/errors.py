"""User-facing errors: the CLI prints one line for these and exits with status 2."""


class FERBenchError(Exception):
    """Bad input (missing folder, malformed file, unknown name, out-of-range value).

    The message must name what is wrong and where (file, line or value) and what was expected.
    """
