"""Only root or the guard's own user may write what decides where audio goes: the config, sink targets, templates."""

import os

import pytest
from conftest import run_guard

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
    _refused(run_guard("--config", str(path), "config", "check"), f"(folder of {path})", "mode 0777")


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
