"""The `guard` command as users and scripts meet it: outputs, exit codes, one-line errors."""

import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest
import speech
from conftest import GUARD, ROOT, run_guard, run_guard_on_a_terminal

from guard import __version__, cli, config


def _one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("guard: error: ") and "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0]


def _sox(src, dst, *opts):
    subprocess.run(["sox", str(src), *opts, str(dst)], check=True, capture_output=True)
    return dst


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"guard {__version__}"


def test_help_teaches_units_and_defaults(capsys):
    assert cli.main(["scan", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(0-1, default: [wake] threshold, each model's own)" in out and '"end": seconds into the file' in out


def test_scan_plain_output_names_file_model_and_time(alexa_wav, capsys):
    assert cli.main(["scan", str(alexa_wav)]) == 0
    line, = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{alexa_wav}: alexa (score ") and " s" in line


def test_scan_of_silence_prints_nothing_and_succeeds(tmp_path, capsys):
    import numpy as np
    from speech import write_wav
    wav = write_wav(tmp_path / "quiet.wav", np.zeros(16000 * 3, np.int16))
    assert cli.main(["scan", "--json", str(wav)]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("content", "needle"), [
    (None, "no such file"),
    (b"", "file is empty"),
    (b"shopping list\n", "not a WAV file"),
], ids=["missing", "empty", "not-wav"])
def test_bad_input_files_exit_2_with_one_line(tmp_path, content, needle):
    path = tmp_path / "input.wav"
    if content is not None:
        path.write_bytes(content)
    result = run_guard("scan", "--json", str(path))
    assert result.returncode == 2 and result.stdout == ""
    _one_line_error(result.stderr, str(path), needle)


@pytest.mark.parametrize("opts", [["-b", "8", "-e", "unsigned-integer"], ["-r", "96000", "-c", "2"]],
                         ids=["8-bit", "96kHz-stereo"])
def test_unusual_but_valid_wavs_are_scanned(tmp_path, alexa_wav, opts):
    wav = _sox(alexa_wav, tmp_path / "odd.wav", *opts)
    result = run_guard("scan", "--json", str(wav))
    assert result.returncode == 0, result.stderr
    hit, = [json.loads(line) for line in result.stdout.splitlines()]
    assert hit["model"] == "alexa" and hit["file"] == str(wav)


def test_one_bad_file_does_not_stop_the_others(tmp_path, alexa_wav):
    result = run_guard("scan", "--json", str(tmp_path / "gone.wav"), str(alexa_wav))
    assert result.returncode == 2
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(alexa_wav)]
    _one_line_error(result.stderr, "gone.wav")


def test_unknown_model_name(alexa_wav):
    result = run_guard("scan", "--model", "alexia", str(alexa_wav))
    assert result.returncode == 2
    _one_line_error(result.stderr, "unknown model 'alexia'", "alexa")


def test_corrupt_model_file(tmp_path, alexa_wav):
    model = tmp_path / "mine.onnx"
    model.write_bytes(b"\x00\x01 not a model " * 100)
    result = run_guard("scan", "--model", str(model), str(alexa_wav))
    assert result.returncode == 2
    _one_line_error(result.stderr, str(model), "not a usable ONNX model")


def test_bad_threshold_is_a_usage_error(alexa_wav):
    result = run_guard("scan", "--threshold", "1.5", str(alexa_wav))
    assert result.returncode == 2 and "outside 0-1" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("toml", "needles"), [
    ("[wake]\ntreshold = 0.4\n", ["[wake] treshold: unknown key; did you mean threshold?"]),
    ("[wake]\nthreshold = 1.5\n", ["[wake] threshold = 1.5: must be 0-1", 'default ("auto")']),
    ("[wake]\nmodels = 'alexa'\n", ["[wake] models = 'alexa': must be a list of strings"]),
    ("[audio]\nchannel = -1\n", ['must be "mix" or a channel number']),
    ("[wake.overrides.hey_mycroft]\nthreshold = 0.7\n", ["hey_mycroft is not in [wake] models"]),
    ("[wake.overrides.alexa]\nthresh = 0.7\n", ["[wake.overrides.alexa] thresh: unknown key"]),
    ("[mic]\ndevice = 'x'\n", ["[mic]: unknown key"]),
    ("[wake\n", ["not valid TOML"]),
    ("[sinks.hub]\ntype = 'mqtt'\n", ["[sinks.hub] is an mqtt sink; it needs [mqtt] host"]),
    ("[mqtt]\nhost = 'hub'\n[sinks.asr]\ntype = 'hermes'\n",
     ["[sinks.asr] is a hermes sink; it needs [mqtt] hermes = true"]),
    ("[audio]\nchimes = true\n", ["[audio] chimes = true needs [audio] output_device"]),
    ("[sinks.assist]\ntype = 'wyoming'\n", ["[sinks.assist] is a wyoming sink; it needs [wyoming] uri"]),
    ("[wyoming]\nuri = '0.0.0.0:10700'\n", ['[wyoming] uri = \'0.0.0.0:10700\': must be "tcp://HOST:PORT"']),
])
def test_bad_config_names_the_key(tmp_path, toml, needles):
    path = tmp_path / "guard.toml"
    path.write_text(toml)
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 2
    _one_line_error(result.stderr, str(path), *needles)


def test_config_from_environment_and_overrides_apply(tmp_path, alexa_wav, monkeypatch, capsys):
    path = tmp_path / "guard.toml"
    path.write_text("[wake]\nmodels = ['alexa']\n[wake.overrides.alexa]\npatience_frames = 25\n")
    monkeypatch.setenv("GUARD_CONFIG", str(path))
    assert cli.main(["config", "check"]) == 0
    out = capsys.readouterr()
    assert f"{path}: ok" in out.err and '[wake.overrides.alexa]\npatience_frames = 25' in out.out
    assert cli.main(["scan", "--json", str(alexa_wav)]) == 0
    assert capsys.readouterr().out == ""  # no wake word holds 25 frames (2 s) over threshold
    assert cli.main(["scan", "--json", "--threshold", "0.5", str(alexa_wav)]) == 0  # a flag drops overrides
    assert json.loads(capsys.readouterr().out)["model"] == "alexa"


def test_missing_config_file_is_named(tmp_path):
    result = run_guard("--config", str(tmp_path / "nope.toml"), "config", "check")
    assert result.returncode == 2
    _one_line_error(result.stderr, "nope.toml: config file not found")


def test_example_config_shows_exactly_the_defaults(tmp_path):
    text = (ROOT / "guard.example.toml").read_text().split("# ---- tables you add")[0]
    lines = [line[2:] if re.match(r"# \w+ = ", line) else line for line in text.splitlines()]
    example = tmp_path / "example.toml"
    example.write_text("\n".join(lines))
    cfg, _ = config.load(str(example))
    assert cfg.wake.models_dir == str(config.CHECKOUT_MODELS), "empty: a checkout's models/"
    assert dataclasses.replace(cfg, wake=dataclasses.replace(cfg.wake, models_dir="")) == config.Config()
    added = [row for row in config.reference() if row[0] == "sinks.NAME" or row[1] == "overrides"]
    assert sum(" = " in line and not line.startswith("#") for line in lines) == len(config.reference()) - len(added)


def test_the_documented_config_table_matches_the_code():
    table = subprocess.run([str(ROOT / "script" / "config-table")], capture_output=True, text=True, check=True)
    assert table.stdout.strip() in (ROOT / "docs" / "configuration.md").read_text()


def test_under_systemd_log_lines_carry_journal_levels(tmp_path, alexa_wav):
    import os
    env = {**os.environ, "JOURNAL_STREAM": "8:1234"}
    (tmp_path / "g.toml").write_text('[audio]\ndevice = "nothing-like-this"\n')
    result = run_guard("--config", str(tmp_path / "g.toml"), "--debug", "scan", str(alexa_wav), env=env)
    assert result.returncode == 0
    debug_lines = [line for line in result.stderr.splitlines() if "wake alexa" in line]
    assert debug_lines and all(line.startswith("<7>guard.wake: ") for line in debug_lines)


def test_config_may_come_after_the_verb(tmp_path, alexa_wav):
    bad = tmp_path / "bad.toml"
    bad.write_text("[wake]\nthreshold = 7\n")
    result = run_guard("scan", "--config", str(bad), str(alexa_wav))
    assert result.returncode == 2 and f"{bad}: [wake] threshold = 7: must be 0-1" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[device]\nid = "hall"\n')
    checked = run_guard("config", "check", "--config", str(good))
    assert checked.returncode == 0 and "device id hall" in checked.stderr


@pytest.mark.parametrize(("value", "ok"), [("2", True), ('"2"', True), ('"ReSpeaker"', True), ("-1", False),
                                           ("true", False), ("2.5", False)])
def test_audio_device_takes_an_index_or_a_name(tmp_path, value, ok):
    path = tmp_path / "g.toml"
    path.write_text(f"[audio]\ndevice = {value}\n")
    result = run_guard("--config", str(path), "config", "check")
    assert (result.returncode == 0) == ok, result.stderr
    if not ok:
        assert "must be a device index (a whole number) or part of its name (a string)" in result.stderr


def test_a_closed_pipe_is_not_an_error(tmp_path):
    from guard.audit import AuditLog
    log = AuditLog(tmp_path / "audit.jsonl", "kitchen")
    for i in range(5000):
        log.record("wiped", by=f"remote {i}")
    log.close()
    piped = subprocess.run(f"{GUARD} audit --path {tmp_path / 'audit.jsonl'} | head -1; exit ${{PIPESTATUS[0]}}",
                           shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == "" and len(piped.stdout.splitlines()) == 1


def test_config_check_opens_what_run_will(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("pw")
    secret.chmod(0o644)
    path = tmp_path / "g.toml"
    path.write_text(f'[wake]\nmodels = ["hey_nobody"]\n[sinks.box]\npath = "{tmp_path / "missing"}"\n'
                    f'[mqtt]\nhost = "localhost"\nusername = "u"\npassword_file = "{secret}"\n')
    result = run_guard("--config", str(path), "config", "check")
    assert result.returncode == 2 and result.stdout == ""
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("guard: error: ") for e in errors)
    assert "hey_nobody" in errors[0] and "no such directory" in errors[1] and "readable by group" in errors[2]


@pytest.mark.parametrize("verb", [["listen", "--seconds", "1"], ["run", "--gpio", "mock"],
                                  ["enroll", "confirm", "--phrase", "okay then, send my request"]])
def test_device_flag_picks_the_microphone_for_one_run(tmp_path, verb):
    import numpy as np
    from conftest import alsa_home
    raw = tmp_path / "room.raw"
    raw.write_bytes(np.zeros(16000, "<i2").tobytes())
    env = {**alsa_home(tmp_path / "home", raw), "STATE_DIRECTORY": str(tmp_path / "state")}
    result = run_guard("--config", "/dev/null", *verb, "--device", "no-such-mic", env=env)
    assert result.returncode == 2, result.stderr
    assert "no input device matches 'no-such-mic'" in result.stderr and "guardtest" in result.stderr


def test_device_flag_opens_the_named_microphone(tmp_path):
    import numpy as np
    from conftest import alsa_home
    raw = tmp_path / "room.raw"
    raw.write_bytes(np.zeros(16000 * 5, "<i2").tobytes())
    result = run_guard("--config", "/dev/null", "listen", "--device", "guardtest", "--seconds", "1",
                       env=alsa_home(tmp_path / "home", raw))
    assert result.returncode == 0, result.stderr
    assert "listening on guardtest" in result.stderr + result.stdout


def test_a_long_scan_shows_its_progress_on_a_terminal_and_nothing_in_a_pipe(tmp_path, alexa_samples):
    hum = np.random.default_rng(0).normal(0, 180, 16000 * 180).astype(np.int16)  # -45 dBFS: the models never rest
    wav = speech.write_wav(tmp_path / "hour.wav", np.concatenate([hum, alexa_samples]))
    result, terminal = run_guard_on_a_terminal("--config", "/dev/null", "scan", str(wav))
    assert result.returncode == 0 and "hour.wav: alexa" in result.stdout
    shown = re.findall(r"scanning \S+hour\.wav: (\d+)% \((\d+)/3 min\)", terminal)
    assert len(shown) >= 2 and int(shown[-1][0]) > int(shown[0][0]), terminal
    assert terminal.endswith("\r\x1b[K"), "the progress line is cleared at the end"
    piped = run_guard("--config", "/dev/null", "scan", str(wav))
    assert piped.returncode == 0 and "scanning" not in piped.stderr and "%" not in piped.stderr
