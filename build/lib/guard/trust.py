"""Who may have written the files that decide where audio goes: only root or the guard's own user.

The config file names the sinks, the enrolment templates decide what counts as
spoken consent, and a command sink's program receives released audio. Anyone
else who could rewrite one of them could redirect audio, so such a file is
refused with one line naming it, its owner and mode, and the fix.
"""

import os
import pwd
import stat
from pathlib import Path


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _problem(path: Path, info: os.stat_result, is_folder_of: Path | None) -> str | None:
    trusted = (0, os.geteuid())
    mode = stat.S_IMODE(info.st_mode)
    what = f"{path} (folder of {is_folder_of})" if is_folder_of else str(path)
    if info.st_uid not in trusted:
        return (f"{what}: owned by {_owner(info.st_uid)}, mode {mode:04o}: only root or {_owner(os.geteuid())} "
                f"may own it; fix: sudo chown root {path}")
    sticky_folder = is_folder_of is not None and mode & stat.S_ISVTX
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky_folder:
        return (f"{what}: owned by {_owner(info.st_uid)}, mode {mode:04o}: others can rewrite it; "
                f"fix: sudo chmod go-w {path}")
    return None


def untrusted(path: Path) -> str | None:
    """Why someone other than root or this user could rewrite `path` or replace it in its folder, or None.

    Devices and missing files are not judged here (`/dev/null` as a config is fine;
    a missing file fails where it is opened).
    """
    try:
        info = path.stat()
    except OSError:
        return None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return None
    problem = _problem(path, info, None)
    if problem is None and stat.S_ISREG(info.st_mode):
        # the folder of the name given (someone could swap a link there) and of the file it leads to
        for folder in dict.fromkeys((path.absolute().parent, path.resolve().parent)):
            problem = problem or _problem(folder, folder.stat(), path)
    return problem
