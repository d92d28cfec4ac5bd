"""What the guard's own process allows the system to keep of it: no core dumps.

A core dump of a guard holding a pending request would write that audio to disk.
systemd's LimitCORE=0 covers the service; this covers `guard run`, `enroll` and
`listen` started by hand.
"""

import contextlib
import ctypes
import ctypes.util
import resource

PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> None:
    """RLIMIT_CORE = 0 and not dumpable (which also keeps other users' debuggers out)."""
    with contextlib.suppress(OSError, ValueError):  # the unit's syscall filter refuses setrlimit; LimitCORE=0 holds
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
