"""Model resolution and verification: bundled names, the user's own files, and bad files."""

import shutil

import pytest

from guard import models
from guard.config import WakeModelSettings
from guard.errors import ModelError
from guard.wake import WakeDetector


def test_bundled_models_resolve_from_the_wheel_and_verify():
    for name in [*models.wake_model_names(), *models.FEATURE_MODELS]:
        model = models.resolve(name)
        assert model.sha256 and model.path.is_file()
        models.open_session(model)


def test_unknown_name_lists_what_exists():
    with pytest.raises(ModelError, match="unknown model 'alexia'; known: alexa, hey_jarvis"):
        models.resolve("alexia")


def test_a_users_own_model_in_models_dir_works(tmp_path, alexa_samples):
    shutil.copy(models.resolve("alexa").path, tmp_path / "my_word.onnx")
    assert "my_word" in models.wake_model_names(tmp_path)
    detector = WakeDetector([WakeModelSettings("my_word")], models_dir=tmp_path)
    frames = alexa_samples[:len(alexa_samples) // 1280 * 1280].reshape(-1, 1280)
    assert [d.model for f in frames for d in detector.process(f)] == ["my_word"]


def test_swapped_bundled_file_is_refused(tmp_path, monkeypatch):
    for entry in ("alexa_v0.1.onnx", "hey_jarvis_v0.1.onnx"):
        shutil.copy(models.resolve("alexa").path, tmp_path / entry)
    monkeypatch.setattr(models, "BUNDLED_DIR", tmp_path)
    models.open_session(models.resolve("alexa"))
    with pytest.raises(ModelError, match="hey_jarvis_v0.1.onnx: SHA-256 .* does not match the manifest"):
        models.open_session(models.resolve("hey_jarvis"))


@pytest.mark.parametrize(("content", "message"), [
    (b"\x08\x07garbage that is not protobuf" * 40, "not a usable ONNX model"),
    (b"", "not a usable ONNX model"),
    (None, "model file not found"),
])
def test_bad_model_files_give_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as e:
        WakeDetector([WakeModelSettings(str(path))])
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_onnx_file_that_is_no_classifier_is_refused():
    with pytest.raises(ModelError, match="not an openWakeWord classifier"):
        WakeDetector([WakeModelSettings(str(models.resolve("melspectrogram").path))])
