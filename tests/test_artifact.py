"""Model fingerprints, atomic writes, and every way a gate artifact refuses to load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from babelgate.gate.artifact import (
    ArtifactError,
    ModelInfo,
    model_info_from_config,
    write_directory_atomic,
    write_json_atomic,
)
from babelgate.gate.estimator import GateConfig, HarmfulnessGate

D = 24

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": D,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 1000,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "dtype": "float32",
    "transformers_version": "5.19.0",
}
MODEL = model_info_from_config("toy/llama", LLAMA_CONFIG)
OTHER = model_info_from_config("toy/other", {**LLAMA_CONFIG, "num_hidden_layers": 9})


def train_data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    v = np.zeros(D)
    v[0] = 2.5
    train = {}
    for lang in ("en", "de", "zh"):
        offset = rng.normal(size=D)
        acts = np.vstack([rng.normal(size=(20, D)) + v + offset, rng.normal(size=(20, D)) + offset])
        train[lang] = (acts.astype(np.float32), np.r_[np.ones(20), np.zeros(20)])
    return train


def fitted_gate(seed: int = 0) -> HarmfulnessGate:
    gate = HarmfulnessGate(GateConfig(layer=5, rank=3), MODEL).fit(train_data(seed))
    gate.metadata["layer_choice"] = {"why": "best HRL validation AUROC", "auroc": 0.97}
    return gate


@pytest.fixture
def saved(tmp_path: Path) -> tuple[HarmfulnessGate, Path]:
    gate = fitted_gate()
    gate.set_threshold("sw", 0.25, note="ops choice")
    return gate, gate.save(tmp_path / "gate")


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- fingerprints


def test_fingerprint_ignores_version_noise_and_spelling_of_rope():
    noisy = {**LLAMA_CONFIG, "transformers_version": "4.57.0", "dtype": "bfloat16", "use_cache": 0}
    assert model_info_from_config("x", noisy).fingerprint == MODEL.fingerprint
    old_style = {k: v for k, v in LLAMA_CONFIG.items() if k != "rope_parameters"}
    old_style.update(rope_theta=10000, rope_scaling=None, head_dim=D // 4)
    assert model_info_from_config("x", old_style).fingerprint == MODEL.fingerprint
    assert ModelInfo("toy/llama", MODEL.fingerprint, "LlamaForCausalLM", 8, D) == MODEL
    assert len(MODEL.fingerprint) == 16


def test_fingerprint_changes_with_the_architecture():
    assert OTHER.fingerprint != MODEL.fingerprint
    scaled = {**LLAMA_CONFIG, "rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3",
                                                  "factor": 8.0}}
    assert model_info_from_config("x", scaled).fingerprint != MODEL.fingerprint


def test_nested_text_config_is_read():
    text = {k: v for k, v in LLAMA_CONFIG.items() if k != "architectures"}
    nested = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {**text, "model_type": "gemma3_text"}}
    info = model_info_from_config("g", nested)
    assert (info.architecture, info.num_layers, info.hidden_size) == (
        "Gemma3ForConditionalGeneration", 8, D)
    with pytest.raises(ArtifactError, match="hidden_size"):
        model_info_from_config("broken", {"model_type": "llama"})


# ----------------------------------------------------------------------------- round trip


def test_save_load_round_trip(saved):
    gate, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "tensors.safetensors"]
    loaded = HarmfulnessGate.load(path, expect_model=MODEL)
    acts = np.vstack([a for a, _ in train_data(seed=5).values()])
    np.testing.assert_array_equal(loaded.score(acts), gate.score(acts))
    np.testing.assert_array_equal(loaded.direction, gate.direction)
    assert loaded.alpha == gate.alpha
    assert loaded.zero_shot_threshold == gate.zero_shot_threshold
    assert loaded.thresholds == gate.thresholds
    assert loaded.threshold("yo").source == "default"
    assert loaded.metadata == gate.metadata
    assert loaded.model == MODEL and loaded.config == gate.config
    assert loaded.training_languages == ["en", "de", "zh"]
    assert loaded.training_counts == {lang: {"harmful": 20, "harmless": 20}
                                      for lang in ("en", "de", "zh")}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["layer"] == 5 and manifest["rank"] == 3
    assert manifest["thresholds"]["sw"]["note"] == "ops choice"
    assert HarmfulnessGate.load(path).score(acts[:3]).tolist() == gate.score(acts[:3]).tolist()


def test_extra_files_travel_with_the_artifact(tmp_path):
    gate = fitted_gate()
    path = gate.save(tmp_path / "gate", extra_files={"report.md": b"# layer 5"})
    assert (path / "report.md").read_bytes() == b"# layer 5"
    assert HarmfulnessGate.load(path).alpha == gate.alpha
    for bad in ("manifest.json", "../escape.md", ".hidden", ""):
        with pytest.raises(ValueError, match="not allowed"):
            gate.save(tmp_path / "other", extra_files={bad: b"x"})
    assert not (tmp_path / "other").exists()


def test_save_thresholds_rewrites_only_the_thresholds(saved):
    _, path = saved
    tensors_before = (path / "tensors.safetensors").read_bytes()
    loaded = HarmfulnessGate.load(path)
    acts, labels = train_data(seed=9)["en"]
    record = loaded.recalibrate("sw", acts[[0, 1, 20, 21]], labels[[0, 1, 20, 21]], note="cli")
    record.note += " run"
    loaded.clear_threshold("yo")
    loaded.save_thresholds(path)
    assert (path / "tensors.safetensors").read_bytes() == tensors_before
    again = HarmfulnessGate.load(path)
    assert again.threshold("sw").source == "recalibrated"
    assert again.threshold("sw") == loaded.threshold("sw")
    assert again.threshold("sw").note == "cli run"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "tensors.safetensors"]
    with pytest.raises(ArtifactError, match="different gate"):
        fitted_gate(seed=1).save_thresholds(path)


# ----------------------------------------------------------------------------- refusals


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match=r"no gate artifact.*babelgate calibrate"):
        HarmfulnessGate.load(tmp_path / "nowhere")


def test_missing_manifest(saved):
    _, path = saved
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest.json is missing"):
        HarmfulnessGate.load(path)


def test_truncated_manifest(saved):
    _, path = saved
    text = (path / "manifest.json").read_bytes()
    (path / "manifest.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not valid JSON"):
        HarmfulnessGate.load(path)


def test_unsupported_format_version(saved):
    _, path = saved
    edit_manifest(path, lambda m: m.update(format_version=2))
    with pytest.raises(ArtifactError, match=r"format_version 2 .* reads version 1"):
        HarmfulnessGate.load(path)


def test_manifest_missing_a_key(saved):
    _, path = saved
    edit_manifest(path, lambda m: m.pop("alpha"))
    with pytest.raises(ArtifactError, match="lacks alpha"):
        HarmfulnessGate.load(path)


def test_invalid_threshold_record(saved):
    _, path = saved
    edit_manifest(path, lambda m: m["thresholds"]["sw"].update(source="guess"))
    with pytest.raises(ArtifactError, match=r"invalid values.*guess"):
        HarmfulnessGate.load(path)


def test_missing_tensors(saved):
    _, path = saved
    (path / "tensors.safetensors").unlink()
    with pytest.raises(ArtifactError, match=r"no tensors\.safetensors"):
        HarmfulnessGate.load(path)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_tensors_fail_the_checksum(saved, damage):
    _, path = saved
    data = bytearray((path / "tensors.safetensors").read_bytes())
    if damage == "truncate":
        data = data[:-7]
    else:
        data[-5] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        HarmfulnessGate.load(path)


def test_tensor_shapes_must_match_the_manifest(saved):
    _, path = saved
    tensors = safetensors.numpy.load((path / "tensors.safetensors").read_bytes())
    tensors["basis"] = tensors["basis"][:, :2].copy()
    data = safetensors.numpy.save(tensors)
    (path / "tensors.safetensors").write_bytes(data)
    edit_manifest(path, lambda m: m.update(tensors_sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(ArtifactError, match="implies"):
        HarmfulnessGate.load(path)


def test_wrong_model_fingerprint(saved):
    _, path = saved
    with pytest.raises(ArtifactError) as err:
        HarmfulnessGate.load(path, expect_model=OTHER)
    message = str(err.value)
    assert "toy/llama" in message and "toy/other" in message
    assert "babelgate calibrate --model toy/other" in message


def test_artifact_without_model_cannot_be_checked(tmp_path):
    gate = HarmfulnessGate(GateConfig(layer=5, rank=3)).fit(train_data())
    path = gate.save(tmp_path / "anon")
    assert HarmfulnessGate.load(path).model is None
    with pytest.raises(ArtifactError, match="records no model"):
        HarmfulnessGate.load(path, expect_model=MODEL)


# ----------------------------------------------------------------------------- atomic writes


def test_existing_output_needs_force_and_force_replaces_it(saved):
    old_gate, path = saved
    new_gate = fitted_gate(seed=3)
    with pytest.raises(ArtifactError, match=r"already exists.*--force"):
        new_gate.save(path)
    assert HarmfulnessGate.load(path).thresholds == old_gate.thresholds
    new_gate.save(path, force=True)
    loaded = HarmfulnessGate.load(path, expect_model=MODEL)
    assert loaded.thresholds == {}
    np.testing.assert_array_equal(loaded.direction, new_gate.direction)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gate"], "no temp dirs left"


def test_force_never_replaces_an_unrelated_directory(tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ArtifactError, match="not a gate artifact"):
        fitted_gate().save(precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_failed_write_leaves_the_old_artifact_and_no_debris(saved):
    gate, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    class Unwritable(dict):
        def items(self):
            yield "tensors.safetensors", b"partial"
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_directory_atomic(path, Unwritable(), force=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    with pytest.raises(OSError, match="disk full"):
        write_directory_atomic(path.parent / "fresh", Unwritable())
    assert sorted(p.name for p in path.parent.iterdir()) == ["gate"]
    assert HarmfulnessGate.load(path).alpha == gate.alpha


def test_write_json_atomic_replaces_the_file(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("{}")
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    with pytest.raises(ValueError):
        write_json_atomic(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
