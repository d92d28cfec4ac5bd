"""Who may change the files that decide where audio goes: only root or the guard's own user, all the way up.

The config file names the sinks, the enrolment templates decide what counts as
spoken consent, a command sink's program and every file it names receive released
audio, and a directory sink's folder holds it. Anyone else who could rewrite one of
them, or any folder on the way to it (they could rename it away and put their own
in its place), or the folder of any symlink met on the way, could redirect audio.
Such a path is refused with one line naming it, its owner and mode, and the fix.
"""

import os
import pwd
import shutil
import stat
from pathlib import Path

MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _problem(what: str, path: Path, info: os.stat_result, is_folder: bool) -> str | None:
    trusted = (0, os.geteuid())
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in trusted:
        who = "root" if os.geteuid() == 0 else f"root or {_owner(os.geteuid())}"
        return (f"{what}: owned by {_owner(info.st_uid)}, mode {mode:04o}: only {who} may own it; "
                f"fix: sudo chown root {path}")
    sticky = is_folder and mode & stat.S_ISVTX  # others may add names there, but never move ours
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky:
        return (f"{what}: owned by {_owner(info.st_uid)}, mode {mode:04o}: others can rewrite it; "
                f"fix: sudo chmod go-w {path}")
    return None


def walk(path: Path) -> tuple[list[Path], Path] | None:
    """Every folder a lookup of `path` passes through (following each symlink, from its own folder) and the
    real file or folder it ends at; None when something on the way does not exist or loops."""
    folders: list[Path] = [Path("/")]
    pending = list(Path(os.path.abspath(path)).parts[1:])
    here, links = Path("/"), 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            here = here.parent
            folders.append(here)
            continue
        step = here / part
        try:
            info = os.lstat(step)
        except OSError:
            return None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = Path(os.readlink(step))
            if target.is_absolute():
                here = Path("/")
                folders.append(here)
            pending = list(target.parts[1:] if target.is_absolute() else target.parts) + pending
            continue
        if pending:
            folders.append(step)
        here = step
    return list(dict.fromkeys(folders)), here


def untrusted(path: Path) -> str | None:
    """Why someone other than root or this user could change what `path` leads to, or None.

    Checks the file or folder it ends at and every folder a lookup passes through,
    symlinks followed. Devices and missing files are not judged here (`/dev/null` as a
    config is fine; a missing file fails where it is opened).
    """
    walked = walk(path)
    if walked is None:
        return None
    folders, end = walked
    try:
        info = end.stat()
    except OSError:
        return None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return None
    given = Path(os.path.abspath(path))
    problem = _problem(str(end) if end == given else f"{end} (where {path} leads)", end, info,
                       stat.S_ISDIR(info.st_mode))
    for folder in folders:
        if problem:
            break
        try:
            problem = _problem(f"{folder} (on the way to {path})", folder, folder.stat(), True)
        except OSError:
            return None
    return problem


COMMAND_PATH = "/usr/local/bin:/usr/bin:/bin"  # where a command sink's bare program name is looked up


def command_files(argv: tuple[str, ...]) -> list[Path]:
    """The files a command sink runs or reads: its program (looked up on COMMAND_PATH if bare) and every
    argument that names an existing file (an interpreter's script, a config it reads)."""
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=COMMAND_PATH) or argv[0]
    named = [Path(program)] + [Path(a) for a in argv[1:] if "/" in a or os.path.isfile(a)]
    return [p for p in named if p.exists()]


def untrusted_command(argv: tuple[str, ...]) -> str | None:
    """Why someone else could change what a command sink runs, or None."""
    for file in command_files(argv):
        problem = untrusted(file)
        if problem:
            return problem
    return None
