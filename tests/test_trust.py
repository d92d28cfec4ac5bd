"""Only root or the guard's own user may write what decides where audio goes: the config, sink targets, templates,
every folder on the way to them and every file a command names; at start and again at each release."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_guard

from guard import trust
from guard.errors import SinkError
from guard.sinks import CommandSink, DirectorySink, Utterance
from guard.wav import encode_wav

NOBODY = 65534
UTTERANCE = Utterance("u1", "20261206T000000Z")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another owner needs root (CI runs as root)")


def _config(folder, text="[device]\nid = \"kitchen\"\n", mode=0o640):
    folder.mkdir(exist_ok=True)
    path = folder / "guard.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _refused(result, *needles):
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("guard: error: ") and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o660])
def test_a_config_others_can_write_is_refused_by_check_and_run(tmp_path, mode):
    path = _config(tmp_path / "etc", mode=mode)
    for verb in (["config", "check"], ["run", "--source", "/nonexistent.wav", "--gpio", "none"]):
        _refused(run_guard("--config", str(path), *verb), str(path), f"mode {mode:04o}", "others can rewrite it",
                 f"fix: sudo chmod go-w {path}")


@needs_root
def test_a_config_owned_by_someone_else_is_refused(tmp_path):
    path = _config(tmp_path / "etc", mode=0o644)
    os.chown(path, 65534, 65534)
    _refused(run_guard("--config", str(path), "config", "check"), str(path), "owned by nobody",
             f"fix: sudo chown root {path}")


def test_a_config_in_a_folder_others_can_write_is_refused(tmp_path):
    path = _config(tmp_path / "open")
    path.parent.chmod(0o777)
    _refused(run_guard("--config", str(path), "config", "check"), f"(on the way to {path})", "mode 0777")


def test_a_config_in_a_sticky_shared_folder_is_fine(tmp_path):
    path = _config(tmp_path / "shared")
    path.parent.chmod(0o1777)  # like /tmp: others cannot replace a file they do not own
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 0, result.stderr


def test_a_sink_folder_others_can_write_is_refused(tmp_path):
    sink = tmp_path / "released"
    sink.mkdir()
    sink.chmod(0o777)
    path = _config(tmp_path / "etc", f'[sinks.box]\npath = "{sink}"\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.box] path", str(sink), "mode 0777")


@needs_root
def test_a_sink_program_someone_else_owns_is_refused(tmp_path):
    program = tmp_path / "bin" / "upload"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\ncat > /dev/null\n")
    program.chmod(0o755)
    os.chown(program, 65534, 65534)
    path = _config(tmp_path / "etc", f'[sinks.up]\ntype = "command"\ncommand = ["{program}"]\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.up] command", "owned by nobody")


def test_a_sink_program_others_can_write_is_refused(tmp_path):
    program = tmp_path / "bin" / "upload"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\ncat > /dev/null\n")
    program.chmod(0o777)
    path = _config(tmp_path / "etc", f'[sinks.up]\ntype = "command"\ncommand = ["{program}"]\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.up] command", "mode 0777")


def test_an_owner_only_config_and_sinks_pass(tmp_path):
    sink = tmp_path / "released"
    sink.mkdir(mode=0o700)
    path = _config(tmp_path / "etc", f'[sinks.box]\npath = "{sink}"\n[sinks.up]\ntype = "command"\n'
                                     'command = ["/bin/cat"]\n')
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 0, result.stderr


def test_a_config_reached_through_a_link_in_a_folder_others_can_write_is_refused(tmp_path):
    real = _config(tmp_path / "etc")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "guard.toml").symlink_to(real)  # anyone could point this link elsewhere
    _refused(run_guard("--config", str(shared / "guard.toml"), "config", "check"), f"{shared}", "mode 0777")


def _script(folder: Path, text: str = "import sys\nsys.stdin.buffer.read()\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "send.py"
    script.write_text(text)
    script.chmod(0o644)
    return script


@needs_root
def test_an_interpreters_script_someone_else_owns_is_refused(tmp_path):
    """Only argv[0] was checked: python3 is root's, but the script it runs belonged to another account."""
    script = _script(tmp_path / "bin")
    os.chown(script, NOBODY, NOBODY)
    path = _config(tmp_path / "etc", f'[sinks.up]\ntype = "command"\ncommand = ["{sys.executable}", "{script}"]\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.up] command", str(script),
             "owned by nobody", f"fix: sudo chown root {script}")


@needs_root
def test_a_program_whose_grandparent_folder_someone_else_owns_is_refused(tmp_path):
    """The other account cannot touch the program, but can rename the folder above it away and put its own."""
    grandparent = tmp_path / "opt"
    program = grandparent / "tools" / "bin" / "upload"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\ncat > /dev/null\n")
    program.chmod(0o755)
    os.chown(grandparent, NOBODY, NOBODY)
    path = _config(tmp_path / "etc", f'[sinks.up]\ntype = "command"\ncommand = ["{program}"]\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.up] command",
             f"{grandparent} (on the way to {program})", "owned by nobody")


@needs_root
def test_a_sink_folder_inside_a_folder_someone_else_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    sink = theirs / "released"
    sink.mkdir(parents=True, mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    path = _config(tmp_path / "etc", f'[sinks.box]\npath = "{sink}"\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.box] path",
             f"{theirs} (on the way to {sink})", "owned by nobody")


@needs_root
def test_a_sink_reached_through_a_symlink_into_a_folder_someone_else_owns_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    (theirs / "released").mkdir(parents=True, mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    (tmp_path / "mine").mkdir(mode=0o700)
    link = tmp_path / "mine" / "released"
    link.symlink_to(theirs / "released")
    path = _config(tmp_path / "etc", f'[sinks.box]\npath = "{link}"\n')
    _refused(run_guard("--config", str(path), "config", "check"), "[sinks.box] path", f"{theirs} (on the way to",
             "owned by nobody")


@needs_root
def test_a_link_met_inside_a_chain_of_links_is_judged_by_its_own_folder(tmp_path):
    """a -> b -> real: the end and the first link live in trusted folders, the middle link in theirs."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "middle").symlink_to(real)
    os.chown(theirs, NOBODY, NOBODY)
    (tmp_path / "mine").mkdir(mode=0o700)
    (tmp_path / "mine" / "first").symlink_to(theirs / "middle")
    problem = trust.untrusted(tmp_path / "mine" / "first")
    assert problem is not None and problem.startswith(f"{theirs} (on the way to") and "owned by nobody" in problem
    assert trust.untrusted(real) is None


def test_a_folder_any_account_may_write_on_the_way_is_refused_even_above_the_parent(tmp_path):
    top = tmp_path / "open"
    program = top / "a" / "b" / "upload"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    top.chmod(0o777)
    assert trust.untrusted(program).startswith(f"{top} (on the way to {program}): owned by")


def test_a_bare_program_name_is_judged_where_the_command_finds_it(tmp_path):
    assert trust.command_files(("cat", "--quiet", "https://example.invalid/up")) == [Path("/usr/bin/cat")]
    assert trust.untrusted_command(("cat",)) is None


@needs_root
def test_a_command_whose_script_changes_hands_after_start_is_refused_at_the_release(tmp_path):
    """The attack: the guard started with a trusted script; another account then got hold of it. The next
    release is refused, naming the script, and nothing runs; once trust is back, releases go again."""
    out = tmp_path / "out"
    out.mkdir(mode=0o700)
    got = out / "got.wav"
    script = _script(tmp_path / "bin", f"import sys\nopen({str(got)!r}, 'wb').write(sys.stdin.buffer.read())\n")
    sink = CommandSink("up", (sys.executable, str(script)), 10.0, "kitchen")
    assert sink.problem() is None
    wav = encode_wav(np.full(1600, 99, np.int16))
    os.chown(script, NOBODY, NOBODY)
    with pytest.raises(SinkError) as refused:
        sink.deliver(bytes(wav), UTTERANCE)
    assert str(script) in str(refused.value) and "owned by nobody" in str(refused.value)
    assert "not run" in str(refused.value) and not (out / "got.wav").exists()
    os.chown(script, 0, 0)
    sink.deliver(bytes(wav), UTTERANCE)
    assert (out / "got.wav").read_bytes() == bytes(wav)


@needs_root
def test_a_sink_folder_swapped_after_start_is_refused_at_the_release(tmp_path):
    """The other account owned nothing at start; then the folder above the sink became theirs (say, a
    careless chown): they could rename the sink away and put their own folder there."""
    parent = tmp_path / "var"
    folder = parent / "released"
    folder.mkdir(parents=True, mode=0o700)
    sink = DirectorySink("box", folder, "kitchen")
    wav = encode_wav(np.full(1600, 7, np.int16))
    assert sink.problem() is None
    os.chown(parent, NOBODY, NOBODY)
    with pytest.raises(SinkError, match=rf"{parent} \(on the way to {folder}\): owned by nobody.*nothing was written"):
        sink.deliver(wav, UTTERANCE)
    assert list(folder.iterdir()) == []


def _file(folder: Path, name: str = "f", mode: int = 0o644) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("x")
    path.chmod(mode)
    return path


def test_a_relative_link_with_dotdot_is_followed_from_its_own_folder(tmp_path):
    real = _file(tmp_path / "real", mode=0o666)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "f"
    link.symlink_to(Path("..") / "real" / "f")
    folders, end = trust.walk(link)
    assert end == real and tmp_path / "links" in folders and Path("/") == folders[0]
    assert trust.untrusted(link) == (f"{real} (where {link} leads): owned by root, mode 0666: others can rewrite it; "
                                     f"fix: sudo chmod go-w {real}")
    assert trust.untrusted(real).startswith(f"{real}: owned by root, mode 0666")


def test_forty_links_are_followed_and_the_forty_first_is_a_loop(tmp_path):
    target = _file(tmp_path / "real", mode=0o666)
    chain = tmp_path / "chain"
    chain.mkdir()
    previous = target
    for i in range(trust.MAX_LINKS + 1):
        link = chain / f"l{i}"
        link.symlink_to(previous)
        previous = link
    assert trust.MAX_LINKS == 40, "the kernel's own limit (MAXSYMLINKS)"
    assert trust.walk(chain / f"l{trust.MAX_LINKS - 1}")[1] == target, "40 links: followed to the end"
    assert "mode 0666" in trust.untrusted(chain / f"l{trust.MAX_LINKS - 1}")
    assert trust.walk(chain / f"l{trust.MAX_LINKS}") is None, "41: the kernel would refuse it too"
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert trust.walk(tmp_path / "a") is None and trust.untrusted(tmp_path / "a") is None


def test_a_missing_path_is_not_judged_here(tmp_path):
    assert trust.walk(tmp_path / "no" / "such") is None and trust.untrusted(tmp_path / "no" / "such") is None


def test_a_setgid_folder_others_can_write_is_no_sticky_folder(tmp_path):
    folder = tmp_path / "shared"
    _file(folder)
    folder.chmod(0o2777)
    assert "mode 2777: others can rewrite it" in trust.untrusted(folder / "f")


@needs_root
def test_an_owner_without_a_name_is_named_by_number(tmp_path):
    path = _file(tmp_path / "x")
    os.chown(path, 54321, 54321)
    assert trust.untrusted(path) == f"{path}: owned by uid 54321, mode 0644: only root may own it; " \
                                    f"fix: sudo chown root {path}"


@needs_root
def test_another_system_account_is_not_root(tmp_path):
    path = _file(tmp_path / "x")
    os.chown(path, 1, 1)  # daemon: a real account, just not root nor the guard's
    assert "owned by daemon" in trust.untrusted(path)


def test_every_file_a_command_names_is_judged_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _file(tmp_path, "local.py")
    script = _file(tmp_path / "bin", "send.py")
    assert trust.command_files(("cat", str(script), "local.py", "--quiet", "/no/such")) == [
        Path("/usr/bin/cat"), script, Path("local.py")]
    assert trust.command_files((str(script), "local.py")) == [script, Path("local.py")]
    assert trust.command_files(("no-such-program", str(script))) == [script], "a program not found is not judged"
    (tmp_path / "local.py").chmod(0o666)
    assert trust.untrusted_command(("cat", "local.py")).startswith(f"{tmp_path / 'local.py'}: owned by root, mode 0666")


def test_a_name_that_sorts_before_dotdot_is_an_ordinary_folder(tmp_path):
    """"-data" and "+x" sort before ".." (and "." too): they are folders like any other, not a step up."""
    path = _file(tmp_path / "-data" / "+x", mode=0o666)
    folders, end = trust.walk(path)
    assert end == path and tmp_path / "-data" in folders and tmp_path / "-data" / "+x" in folders
    assert trust.untrusted(path).startswith(f"{path}: owned by root, mode 0666")


def test_a_link_to_a_path_that_sorts_before_it_still_says_where_it_leads(tmp_path):
    real = _file(tmp_path / "a", mode=0o666)
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "link").symlink_to(real)
    assert trust.untrusted(tmp_path / "z" / "link").startswith(f"{real} (where {tmp_path / 'z' / 'link'} leads): ")
