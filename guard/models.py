"""Finding, verifying and opening models; never downloads, never unpickles.

Bundled models ship in `guard/models/` (openWakeWord's ONNX files and microWakeWord's
TFLite files, see NOTICE.md there) and must match the SHA-256 in its `manifest.toml`.
A user's own openWakeWord classifier is `NAME.onnx` in `[wake] models_dir`, or any
path ending in `.onnx`.
"""

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from guard.errors import ModelError

BUNDLED_DIR = Path(__file__).resolve().parent / "models"
MANIFEST = BUNDLED_DIR / "manifest.toml"
FEATURE_MODELS = ("melspectrogram", "embedding", "silero_vad")


@dataclass(frozen=True)
class ModelFile:
    """A model on disk, with the hash it must have (None for a user's own file)."""

    name: str
    path: Path
    sha256: str | None = None
    meta: dict = field(default_factory=dict, compare=False)  # what the manifest says beside the hash


def _manifest(section: str = "bundled") -> dict[str, dict]:
    try:
        with MANIFEST.open("rb") as f:
            return tomllib.load(f)[section]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise ModelError(f"{MANIFEST}: cannot read the model manifest ({e}); reinstall guard") from None


def resolve_micro(name: str) -> ModelFile:
    """A bundled microWakeWord model by name, with its published cutoff and averaging window."""
    bundled = _manifest("micro")
    if name not in bundled:
        raise ModelError(f"no microWakeWord model for {name!r}; it has: {', '.join(bundled)} "
                         "(or use engine = \"openwakeword\" for this wake word)")
    entry = bundled[name]
    return ModelFile(name, BUNDLED_DIR / entry["file"], entry["sha256"], entry)


def wake_model_names(models_dir: Path | None = None) -> list[str]:
    """Names usable as `--model NAME`: bundled wake words, then the user's own."""
    bundled = [n for n in _manifest() if n not in FEATURE_MODELS]
    own = sorted(p.stem for p in models_dir.glob("*.onnx")) if models_dir else []
    return bundled + [n for n in own if n not in bundled]


def resolve(name_or_path: str, models_dir: Path | None = None) -> ModelFile:
    """Turn a model name or path into a file, without opening it.

    Args:
        name_or_path: a bundled name (`alexa`), a file stem in `models_dir`, or a path to `.onnx`.
        models_dir: where the user's own models live, if anywhere.
    """
    if name_or_path.endswith(".onnx") or "/" in name_or_path:
        path = Path(name_or_path).expanduser()
        return ModelFile(path.stem, path)
    bundled = _manifest()
    if name_or_path in bundled:
        entry = bundled[name_or_path]
        return ModelFile(name_or_path, BUNDLED_DIR / entry["file"], entry["sha256"])
    own = models_dir / f"{name_or_path}.onnx" if models_dir else None
    if own is not None and own.is_file():
        return ModelFile(name_or_path, own)
    known = ", ".join(wake_model_names(models_dir))
    raise ModelError(f"unknown model {name_or_path!r}; known: {known} (or give a path to an .onnx file)")


def _check_hash(model: ModelFile, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != model.sha256:
        raise ModelError(f"{model.path}: SHA-256 {digest[:12]}... does not match the manifest; "
                         "the file is corrupt or replaced; reinstall guard")


def verify(model: ModelFile) -> None:
    """Refuse a missing file, or a bundled one whose SHA-256 is not the manifest's."""
    verified_bytes(model)


def verified_bytes(model: ModelFile) -> bytes:
    """The model's bytes, hash-checked as read, so what runs is what was checked."""
    if not model.path.is_file():
        raise ModelError(f"{model.path}: model file not found")
    try:
        data = model.path.read_bytes()
    except OSError as e:
        raise ModelError(f"{model.path}: cannot read the model ({e.strerror})") from None
    if model.sha256 is not None:
        _check_hash(model, data)
    return data


def open_session(model: ModelFile) -> ort.InferenceSession:
    """Open a verified model (see `session`)."""
    return session(verified_bytes(model), model.path)


def session(data: bytes, source: Path | str) -> ort.InferenceSession:
    """An onnxruntime session on one CPU thread (the Pi has four cores and other work); `source` names it
    in the error if onnxruntime refuses it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for bad files
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(f"{source}: not a usable ONNX model ({reason})") from None
