"""Model resolution and verification: bundled names, the user's own files, and bad files."""

import shutil
import tomllib

import pytest

from guard import config, models, parts
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


def test_the_models_readme_lists_every_bundled_model_with_its_hash():
    readme = (config.CHECKOUT_MODELS / "README.md").read_text()
    listed = {(row.split("|")[3].strip(" `"), row.split("|")[4].strip(" `"))
              for row in readme.splitlines() if row.startswith("| `")}
    manifest = tomllib.loads((models.BUNDLED_DIR / "manifest.toml").read_text())
    bundled = {(e["file"], e["sha256"]) for table in ("bundled", "micro") for e in manifest[table].values()}
    assert listed == bundled


def test_models_beside_the_config_come_first_then_the_checkouts(tmp_path):
    toml = tmp_path / "guard.toml"
    toml.write_text("[device]\nid = \"kitchen\"\n")
    assert config.load(str(toml))[0].wake.models_dir == str(config.CHECKOUT_MODELS), "a checkout's models/"
    (tmp_path / "models").mkdir()
    assert config.load(str(toml))[0].wake.models_dir == str(tmp_path / "models"), "beside the config file first"
    toml.write_text(f'[wake]\nmodels_dir = "{tmp_path / "mine"}"\n')
    assert config.load(str(toml))[0].wake.models_dir == str(tmp_path / "mine"), "a folder named in the config wins"


def test_a_model_dropped_into_the_checkouts_models_folder_is_used_by_name(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout" / "models"  # a stand-in checkout: the real one is shared by parallel tests
    checkout.mkdir(parents=True)
    monkeypatch.setattr(config, "CHECKOUT_MODELS", checkout)
    shutil.copy(models.resolve("alexa").path, checkout / "own_word.onnx")
    toml = tmp_path / "guard.toml"
    toml.write_text("")
    cfg, _ = config.load(str(toml))
    assert models.resolve("own_word", parts.models_dir(cfg)).path == checkout / "own_word.onnx"
