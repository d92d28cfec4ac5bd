"""The guard as a service: systemd unit, notify protocol, install.sh --system, firmware_config."""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import speech
from conftest import ROOT, until
from mqtt_broker import Broker, Subscriber

from guard import config
from guard.assembly import assemble
from guard.config import WakeModelSettings
from guard.daemon import Daemon, RunOptions
from guard.microphone import AUDIO_STALL_SECONDS
from guard.wake import WakeDetector

INSTALL = ROOT / "install.sh"


def _install(destdir: Path, *args: str, path_first: Path | None = None) -> subprocess.CompletedProcess:
    path = (f"{path_first}:" if path_first else "") + "/usr/sbin:/usr/bin:/sbin:/bin"
    return subprocess.run([str(INSTALL), *args], env={"DESTDIR": str(destdir), "PATH": path},
                          capture_output=True, text=True, timeout=600)


def _argv_recorder(folder: Path, program: str) -> Path:
    """A `program` earlier in PATH that appends its command line to a log, then runs the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{program}.argv"
    wrapper = folder / program
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec {shutil.which(program)} "$@"\n')
    wrapper.chmod(0o755)
    return log


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("destdir")
    recorders = root.parent / f"{root.name}-argv"
    for program in ("mosquitto_passwd", "python3"):
        _argv_recorder(recorders, program)
    result = _install(root, "--system", "--with-broker", path_first=recorders)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_installer_never_puts_the_broker_password_on_a_command_line(staged):
    secret = (staged / "etc/guard/mqtt-password").read_text().strip()
    recorded = staged.parent / f"{staged.name}-argv" / "mosquitto_passwd.argv"
    assert len(secret) == 32 and recorded.exists(), "mosquitto_passwd ran under the recorder"
    for log in recorded.parent.glob("*.argv"):
        assert secret not in log.read_text(), f"{log.stem} saw the password in its argv"
    hashed = (staged / "etc/mosquitto/guard.passwd").read_text()
    user, _, stored = hashed.strip().partition(":")
    assert user and stored.startswith("$") and secret not in hashed, "stored hashed, never in plain text"


def test_the_installed_broker_password_logs_in(staged, tmp_path):
    conf = (ROOT / "firmware_config/mosquitto/guard.conf").read_text()
    conf = conf.replace("listener 1883 127.0.0.1", "listener PORT 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/guard.passwd", str(staged / "etc/mosquitto/guard.passwd"))
    conf = conf.replace("/etc/mosquitto/guard.acl", str(staged / "etc/mosquitto/guard.acl"))
    user = (staged / "etc/mosquitto/guard.passwd").read_text().split(":")[0]
    secret = (staged / "etc/guard/mqtt-password").read_text().strip()
    broker = Broker(tmp_path / "broker", extra=conf).start()
    try:
        good = Subscriber(broker.port, [f"guard/{user}/#"], username_pw_set=(user, secret))
        bad = Subscriber(broker.port, [f"guard/{user}/#"], username_pw_set=(user, "not-it"))
        assert good.wait_for(lambda: good.client.is_connected())
        assert not bad.wait_for(lambda: bad.client.is_connected(), timeout=1.0)
        good.close()
        bad.close()
    finally:
        broker.stop()


def test_unit_verifies_and_scores_at_most_2(staged):
    shutil.copytree("/usr/lib/systemd/system", staged / "usr/lib/systemd/system", symlinks=True,
                    dirs_exist_ok=True)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={staged}", "guard.service"],
                            capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd/guard.service")],
                              capture_output=True, text=True)
    score = float(re.search(r"Overall exposure level for guard.service: ([\d.]+)", security.stdout).group(1))
    print(f"systemd-analyze security --offline=true: {score}")
    assert score <= 2.0


def _mode(path: Path) -> str:
    return oct(path.stat().st_mode & 0o777)[2:]


def test_system_install_lands_with_the_right_modes_and_is_idempotent(staged):
    assert _mode(staged / "etc/guard/guard.toml") == "640"
    assert _mode(staged / "etc/guard") == "750"
    assert _mode(staged / "etc/guard/models") == "755", "the owner's own wake-word models go here"
    assert _mode(staged / "var/lib/guard") == "700"
    assert _mode(staged / "etc/guard/mqtt-password") == "600"
    assert (staged / "etc/systemd/system/guard.service").read_bytes() == (ROOT / "systemd/guard.service").read_bytes()
    cfg = staged / "etc/guard/guard.toml"
    assert 'host = "localhost"' in cfg.read_text() and 'password_file = "/etc/guard/mqtt-password"' in cfg.read_text()
    guard = staged / "opt/guard/.venv/bin/guard"
    here = staged.parent / f"{staged.name}-check.toml"  # the installed file names the real /etc/guard secret
    here.write_text(cfg.read_text().replace("/etc/guard/mqtt-password", str(staged / "etc/guard/mqtt-password")))
    check = subprocess.run([str(guard), "config", "check", str(here)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    demo = subprocess.run([str(guard), "--config", "/dev/null", "demo"], capture_output=True, text=True, cwd="/")
    assert demo.returncode == 0, demo.stderr
    assert "demo  released   utterance" in demo.stdout and "7 records, intact" in demo.stdout
    where = subprocess.run([str(guard.with_name("python")), "-c", "import guard, importlib.util as u; "
                            "print(guard.__file__, u.find_spec('openwakeword'), u.find_spec('scipy'))"],
                           capture_output=True, text=True, cwd="/").stdout.split()
    assert where == [str(staged / f"opt/guard/.venv/lib/python{sys.version_info.major}.{sys.version_info.minor}"
                                  "/site-packages/guard/__init__.py"), "None", "None"], "a wheel, not the clone"
    cfg.write_text(cfg.read_text() + "\n# my own line\n")
    again = _install(staged, "--system", "--with-broker")
    assert again.returncode == 0
    assert "already installed; nothing changed" in again.stdout and "keep" in again.stdout
    assert cfg.read_text().endswith("# my own line\n"), "an existing config is never overwritten"


def test_dry_run_touches_nothing(tmp_path):
    result = _install(tmp_path, "--system", "--with-broker", "--dry-run")
    assert result.returncode == 0
    assert "would install" in result.stdout and "would create the venv" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_uninstall_keeps_config_and_audit_log_and_purge_removes_them(tmp_path):
    assert _install(tmp_path, "--system").returncode == 0
    (tmp_path / "var/lib/guard/audit.jsonl").write_text("{}\n")
    result = _install(tmp_path, "--uninstall")
    assert result.returncode == 0
    assert not (tmp_path / "opt/guard").exists() and not (tmp_path / "etc/systemd/system/guard.service").exists()
    assert (tmp_path / "etc/guard/guard.toml").exists() and (tmp_path / "var/lib/guard/audit.jsonl").exists()
    assert "install.sh: nothing to remove" in _install(tmp_path, "--uninstall").stdout
    assert _install(tmp_path, "--uninstall", "--purge").returncode == 0
    assert not (tmp_path / "etc/guard").exists() and not (tmp_path / "var/lib/guard").exists()


@pytest.mark.parametrize("name", ["respeaker-usb-v2", "respeaker-2mic-hat", "respeaker-4mic-hat", "usb-mic"])
def test_each_alsa_config_parses_and_shows_its_pcm(tmp_path, name):
    text = (ROOT / "firmware_config/alsa" / f"{name}.conf").read_text()
    pcm = re.findall(r"^pcm\.(\w+) \{", text, re.M)[-1]
    (tmp_path / ".asoundrc").write_text(text)
    listing = subprocess.run(["arecord", "-L"], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
    lines = listing.stdout.splitlines()
    assert pcm in lines, listing.stdout + listing.stderr
    assert lines[lines.index(pcm) + 1].strip().startswith("ReSpeaker") or "USB" in lines[lines.index(pcm) + 1]
    (tmp_path / ".asoundrc").write_text(text.replace("}", "", 1))  # the same check catches a broken file
    broken = subprocess.run(["arecord", "-L"], env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert pcm not in broken.stdout.splitlines()


def test_broker_acl_confines_each_guard_to_its_own_tree(tmp_path):
    passwd, acl = tmp_path / "passwd", tmp_path / "guard.acl"
    shutil.copy(ROOT / "firmware_config/mosquitto/guard.acl", acl)
    for user in ("kitchen", "homeassistant", "rhasspy"):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == "kitchen" else []), str(passwd), user, "pw"],
                       check=True, capture_output=True)
    conf = (ROOT / "firmware_config/mosquitto/guard.conf").read_text()
    conf = conf.replace("listener 1883 127.0.0.1", "listener PORT 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/guard.passwd", str(passwd)).replace("/etc/mosquitto/guard.acl", str(acl))
    broker = Broker(tmp_path / "broker", extra=conf).start()
    try:
        hub = Subscriber(broker.port, ["guard/#"], username_pw_set=("homeassistant", "pw"))
        kitchen = Subscriber(broker.port, ["guard/#"], username_pw_set=("kitchen", "pw"))
        hermes = Subscriber(broker.port, ["hermes/hotword/+/detected", "hermes/audioServer/+/audioFrame"],
                            username_pw_set=("rhasspy", "pw"))
        assert hub.wait_for(lambda: all(s.client.is_connected() for s in (hub, kitchen, hermes)))
        time.sleep(0.3)
        kitchen.publish("guard/hall/event/wake", "spoofed")
        kitchen.publish("hermes/hotword/hall/detected", '{"siteId": "hall"}')
        kitchen.publish("hermes/audioServer/hall/audioFrame", b"RIFF spoofed")
        kitchen.publish("hermes/hotword/kitchen/detected", '{"siteId": "kitchen"}')
        kitchen.publish("hermes/audioServer/kitchen/audioFrame", b"RIFF mine")
        kitchen.publish("guard/kitchen/event/wake", "mine")
        hub.publish("guard/kitchen/cmd/mute", "")
        assert hub.wait_for(lambda: "guard/kitchen/cmd/mute" in hub.topics())
        assert kitchen.wait_for(lambda: "guard/kitchen/cmd/mute" in kitchen.topics())
        assert "guard/kitchen/event/wake" in hub.topics()
        assert "guard/hall/event/wake" not in hub.topics(), "a guard cannot publish as another"
        assert hermes.wait_for(lambda: "hermes/hotword/kitchen/detected" in hermes.topics())
        assert hermes.wait_for(lambda: "hermes/audioServer/kitchen/audioFrame" in hermes.topics())
        assert "hermes/hotword/hall/detected" not in hermes.topics(), "nor announce another's Hermes wake"
        assert "hermes/audioServer/hall/audioFrame" not in hermes.topics(), "nor send audio as another site"
        hermes.close()
        hub.close()
        kitchen.close()
    finally:
        broker.stop()


class NotifyListener:
    """A test NOTIFY_SOCKET: collects what the daemon tells systemd, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def pings(self, since: float = 0.0) -> int:
        return sum(1 for t, m in self.messages if t >= since and "WATCHDOG=1" in m)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    yield listener
    listener.close()


def _daemon(tmp_path, wav) -> Daemon:
    cfg = config.Config(audit=config.AuditConfig(str(tmp_path / "audit.jsonl")))
    return assemble(cfg, RunOptions(str(wav), "none"), WakeDetector([WakeModelSettings("alexa")]))


def test_ready_after_start_then_watchdog_pings(tmp_path, notify):
    wav = speech.write_wav(tmp_path / "quiet.wav", speech.silence(30))
    daemon = _daemon(tmp_path, wav)
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert until(lambda: notify.pings() >= 5, 30), notify.messages
        first = notify.messages[0][1].splitlines()
        assert first[0] == "READY=1" and first[1].startswith("STATUS=guarding as ")
    finally:
        daemon.stop()
        thread.join(10)
    deadline = time.monotonic() + 2
    while not any(m == "STOPPING=1" for _, m in notify.messages) and time.monotonic() < deadline:
        time.sleep(0.02)  # the listener thread may not have read the last datagram yet
    assert [m for _, m in notify.messages][-1] == "STOPPING=1"


def test_watchdog_pings_stop_when_the_audio_loop_hangs(tmp_path, notify):
    wav = speech.write_wav(tmp_path / "quiet.wav", speech.silence(30))
    daemon = _daemon(tmp_path, wav)
    hang, release = threading.Event(), threading.Event()
    frames = daemon.audio.source.frames

    def hanging_frames():
        for frame in frames():
            if hang.is_set():
                release.wait()  # the audio thread blocks, as a wedged USB device would
            yield frame

    daemon.audio.source.frames = hanging_frames
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        assert until(lambda: notify.pings() >= 2, 30), "pings while audio flows"
        hang.set()
        hung_at = time.monotonic()

        def pings_stopped() -> bool:  # a 1.5 s window without a ping; they came every 0.2 s
            now = time.monotonic()
            return now - hung_at >= 1.5 and notify.pings(now - 1.5) == 0

        assert until(pings_stopped, AUDIO_STALL_SECONDS + 30), "pings went on while the audio thread hung"
        assert time.monotonic() - hung_at >= AUDIO_STALL_SECONDS, "the pings stopped before the stall was long"
        assert thread.is_alive()
    finally:
        release.set()
        daemon.stop()
        thread.join(10)


def test_install_refuses_32_bit_arm_in_one_line(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "uname").write_text("#!/bin/sh\necho armv7l\n")
    (fake / "uname").chmod(0o755)
    result = subprocess.run([str(INSTALL)], env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("install.sh: error: 32-bit ARM (armv7l): onnxruntime has no build for it")
    assert "64-bit Raspberry Pi OS" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _unit_settings() -> dict[str, list[str]]:
    """The [Service] settings of the shipped unit, each key with its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (ROOT / "systemd/guard.service").read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def _with_parents(mounts: list[str]) -> list[str]:
    """bubblewrap makes the folders a mount needs 0700; the service user must be able to pass through them."""
    parents: dict[str, None] = {}
    for i, arg in enumerate(mounts):
        if arg in ("--bind", "--ro-bind"):
            parts = Path(mounts[i + 2]).parts[1:-1]
            parents.update((str(Path("/", *parts[:k])), None) for k in range(1, len(parts) + 1))
    return [a for p in parents for a in ("--perms", "0755", "--dir", p)] + mounts


def _descendant(pid: int, name: str) -> int | None:
    """The first process under `pid` running `name` (itself, or as the script of its interpreter)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in map(int, (task / "children").read_text().split()):
            if name in Path(f"/proc/{child}/cmdline").read_text(errors="replace").split("\0")[:2]:
                return child
            found = _descendant(child, name)
            if found:
                return found
    return None


def test_the_service_starts_the_way_its_unit_runs_it(staged, tmp_path):
    """The installed wheel, started as the unit starts it: an unprivileged user with no capabilities, in its
    WorkingDirectory, on a read-only root (ProtectSystem=strict) with private /tmp, /run and no /home, /proc
    hiding other users' processes, the unit's environment; the mic is an ALSA file PCM in /etc/asound.conf.
    Not emulated here: the syscall filter, device policy and IP rules (systemd alone applies them)."""
    unit = _unit_settings()
    # lgpio makes its notify pipe in the working directory (LG_WD): it must be the writable runtime directory
    runtime = f"/run/{unit['RuntimeDirectory'][0]}"
    assert unit["WorkingDirectory"] == [runtime] and f"LG_WD={runtime}" in unit["Environment"]
    # onnxruntime reads /proc/cpuinfo; the dsnoop ALSA configs share the mic through System V IPC
    assert "ProcSubset" not in unit and "PrivateIPC" not in unit
    user_dirs = {f"/var/lib/{unit['StateDirectory'][0]}": tmp_path / "state",
                 unit["WorkingDirectory"][0]: tmp_path / "run"}
    for folder in user_dirs.values():
        folder.mkdir()
        shutil.chown(folder, 65534, 65534)
        folder.chmod(0o700)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    (config_dir / "guard.toml").write_text('[device]\nid = "unit"\n[audio]\ndevice = "guardtest"\n'
                                           '[wake]\nmodels = ["alexa"]\n[gpio]\nbutton_pin = 17\n')
    mic = tmp_path / "mic.raw"
    np.random.default_rng(1).normal(0, 30, 16000 * 120).astype("<i2").tofile(mic)  # a quiet room
    (tmp_path / "asound.conf").write_text('pcm.guardtest {\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
                                          '  infile "/srv/mic.raw"\n  format "raw"\n}\n')
    for path in (config_dir, config_dir / "guard.toml", mic, tmp_path / "asound.conf"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    notify = NotifyListener(tmp_path / "notify.sock")
    (tmp_path / "notify.sock").chmod(0o777)
    environment = dict(pair.split("=", 1) for line in unit["Environment"] for pair in line.split())
    environment |= {"PATH": "/usr/bin:/bin", "HOME": "/var/lib/guard", "NOTIFY_SOCKET": "/run/notify.sock",
                    "WATCHDOG_USEC": "2000000", "STATE_DIRECTORY": "/var/lib/guard",
                    "RUNTIME_DIRECTORY": unit["WorkingDirectory"][0], "CONFIGURATION_DIRECTORY": "/etc/guard",
                    "GPIOZERO_PIN_FACTORY": "mock"}  # a drop-in for a machine without GPIO
    system = [a for d in ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/sys") if Path(d).exists()
              for a in ("--ro-bind", d, d)]
    etc = [a for f in ("passwd", "group", "nsswitch.conf", "ld.so.cache", "localtime", "alsa")
           if Path("/etc", f).exists() for a in ("--ro-bind", f"/etc/{f}", f"/etc/{f}")]
    app = staged / "opt/guard"
    mounts = [*system, *etc, "--ro-bind", sys.base_prefix, sys.base_prefix,  # the venv's interpreter
              "--ro-bind", str(app), str(app), "--ro-bind", str(app), "/opt/guard",
              "--ro-bind", str(config_dir), "/etc/guard", "--ro-bind", str(tmp_path / "asound.conf"),
              "/etc/asound.conf", "--ro-bind", str(mic), "/srv/mic.raw",
              *[a for dest, src in user_dirs.items() for a in ("--bind", str(src), dest)],
              "--bind", str(tmp_path / "notify.sock"), "/run/notify.sock"]
    nofile = unit["LimitNOFILE"][0]
    unprivileged = ["prlimit", f"--nofile={nofile}:{nofile}", "--",  # the unit's descriptor limit
                    "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--no-new-privs",
                    "--bounding-set", "-all", "--inh-caps", "-all", "--"]
    command = ["bwrap", "--dev", "/dev", "--unshare-pid", "--proc", "/proc", "--perms", "0755", "--tmpfs", "/run",
               "--tmpfs", "/tmp", *_with_parents(mounts), "--remount-ro", "/", "--die-with-parent",
               "--chdir", unit["WorkingDirectory"][0], "--clearenv",
               *[a for k, v in environment.items() for a in ("--setenv", k, v)], "--",
               "sh", "-c", 'mount -o remount,hidepid=invisible /proc && exec "$@"', "sh",  # ProtectProc=invisible
               *unprivileged, *unit["ExecStart"][0].split()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not notify.pings():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.1)
        first = notify.messages[0][1].splitlines()
        assert first[:2] == ["READY=1", "STATUS=guarding as unit"]
        guard = _descendant(process.pid, "/opt/guard/.venv/bin/guard")
        # in a chroot (script/fresh-debian) /proc names the directory by its path outside, with the chroot before it
        cwd, wanted = str(Path(f"/proc/{guard}/cwd").readlink()), unit["WorkingDirectory"][0]
        assert guard and (cwd == wanted or cwd.endswith(wanted)), cwd
        assert Path(f"/proc/{guard}/status").read_text().count("\t0000000000000000") >= 3, "capabilities left"
        limits = Path(f"/proc/{guard}/limits").read_text()
        assert f"Max open files            {nofile}" in limits, limits
        assert len(os.listdir(f"/proc/{guard}/fd")) < int(nofile) // 4, "room to spare under LimitNOFILE"
        subprocess.run(["kill", "-TERM", str(guard)], check=True)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
        notify.close()
    assert process.returncode == 0, err[-2000:]
    assert "fault" not in err and "Traceback" not in err, err[-2000:]
    assert notify.messages[-1][1] == "STOPPING=1"
    assert (tmp_path / "state/audit.jsonl").exists() and (tmp_path / "state/audit.jsonl").stat().st_uid == 65534
