"""User-facing errors: the CLI prints their message alone, without a traceback, and exits with status 2."""


class KilnError(Exception):
    """A problem with the user's input, files or config; the message names the bad value and what is valid."""
