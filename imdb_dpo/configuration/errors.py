"""The errors a user can fix: a stage prints their message as one paragraph and exits with status 2 (imdb_dpo/launch/cli.py)."""


class UserError(Exception):
    """A problem in the inputs, the config or the files on disk that the user can fix; its message says how."""


class ConfigError(UserError, ValueError):
    """A configuration problem the user must fix; the message names the file, the key and the fix."""


def first_line(error: BaseException, limit: int = 300, default: str = "") -> str:
    """The first line of an error's message, cut to `limit` characters, for a one-paragraph message that quotes it
    (`default`, e.g. the error's type name, when it has no text)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else default
