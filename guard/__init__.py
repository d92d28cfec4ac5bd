"""pi-guard: a wake-word privacy guard that releases audio only on local consent."""

__version__ = "0.1.0"
