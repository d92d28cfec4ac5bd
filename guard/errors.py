"""Exit codes and the exception family; each error knows the code it exits with."""

from enum import IntEnum


class ExitStatus(IntEnum):
    """The codes `guard` exits with; scripts rely on them."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130  # Ctrl-C, as shells report it


class GuardError(Exception):
    """Base of every error `guard` reports as one line instead of a traceback."""

    exit_status = ExitStatus.FAILURE


class UsageError(GuardError, ValueError):
    """Bad arguments, config or input: the user can fix it, so exit 2."""

    exit_status = ExitStatus.USAGE


class ConfigError(UsageError):
    """A config file, key or value that cannot be used."""


class AudioInputError(UsageError):
    """An audio file that cannot be read as PCM or float WAV."""


class ModelError(UsageError):
    """A wake-word model that is unknown, missing, corrupt or of the wrong shape."""


class DeviceError(UsageError):
    """A microphone that is absent or cannot be opened the way it was asked."""


class AuditError(GuardError):
    """The audit log cannot take a record (full or read-only disk, or another guard holds it): exit 1."""


class SinkError(GuardError):
    """A release that did not arrive: disk full, folder missing, broker away, command failed."""


class DeliveryUncertain(SinkError):
    """A release that may still arrive: handed on without an acknowledgement, or a command killed mid-way."""
