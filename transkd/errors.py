"""User-facing errors: the CLI prints their message as one sentence, without a traceback."""


class TranskdError(Exception):
    """Base of every error caused by the user's input (a file, an option, a config key)."""


class ConfigError(TranskdError, ValueError):
    """A config key, value or option that is unknown, of the wrong type or out of range."""


class UnknownOptionError(ConfigError):
    """An option name a builder does not take, with the closest one it does (or None), so that
    the config layer can name it by its full dotted key."""

    def __init__(self, name: str, closest: str | None, known: tuple[str, ...]) -> None:
        hint = f"; did you mean {closest!r}?" if closest else ""
        super().__init__(f"unknown option {name!r}{hint} (options: {', '.join(known)})")
        self.name, self.closest, self.known = name, closest, known


class CheckpointError(TranskdError, ValueError):
    """A checkpoint that is missing, corrupt, unsafe or does not fit the model."""


class DatasetError(TranskdError, ValueError):
    """A dataset folder, split or file that is missing or malformed."""


class DiskFullError(TranskdError):
    """A file could not be written because the disk or the user's quota is full."""

    def __init__(self, path: object, kept: str,
                 advice: str = "free some space and run the command again",
                 reason: str = "no space left on device") -> None:
        self.path, self.kept, self.reason = path, kept, reason
        super().__init__(f"cannot write {path}: {reason} ({kept}); {advice}")
