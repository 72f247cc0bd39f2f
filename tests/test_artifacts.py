"""Model integrity: model.json records the SHA-256 of model.safetensors; a damaged weights file is refused;
float16 / int8 weight storage shrinks the file and loads back exactly as the rounded float32 model."""

import os
import json
import shutil
from pathlib import Path

import pytest

from melanoma import cli
from melanoma.artifacts import (HASH_KEY, build_test_model, file_sha256, load_model, read_meta, round_weights,
                                save_model)
from melanoma.errors import ModelError

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_test_model(tmp_path_factory.mktemp("model") / "m", image_size=48)


def _copy(model_dir: Path, out: Path) -> Path:
    shutil.copytree(model_dir, out)
    return out


def _assert_one_line_error(path: Path) -> str:
    """load_model fails with one line naming the weights file."""
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path / "model.safetensors") in message
    return message


def test_save_model_records_the_weights_hash(model_dir):
    meta = read_meta(model_dir)
    assert meta[HASH_KEY] == file_sha256(model_dir / "model.safetensors")
    assert len(meta[HASH_KEY]) == 64
    load_model(model_dir)  # and it verifies


def test_truncated_weights_are_refused(model_dir, tmp_path):
    bad = _copy(model_dir, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "does not match" in _assert_one_line_error(bad)


def test_edited_weights_are_refused(model_dir, tmp_path):
    """One byte changed inside a tensor: the file still parses and would load silently without the hash."""
    bad = _copy(model_dir, tmp_path / "bad")
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (bad / "model.safetensors").write_bytes(bytes(data))
    assert "truncated, replaced or edited" in _assert_one_line_error(bad)


def test_swapped_weights_are_refused(model_dir, tmp_path):
    """Another model's weights of the same architecture: shapes match, only the hash tells them apart."""
    other = build_test_model(tmp_path / "other", image_size=48, seed=1)
    bad = _copy(model_dir, tmp_path / "bad")
    shutil.copyfile(other / "model.safetensors", bad / "model.safetensors")
    _assert_one_line_error(bad)


def test_cli_reports_a_damaged_model_in_one_line(model_dir, tmp_path, tiny_isic, capsys):
    bad = _copy(model_dir, tmp_path / "bad")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[:-100])
    image = next(tiny_isic.rglob("*.jpg"))
    assert cli.main(["predict", str(image), "--model", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "model.safetensors" in err
    assert "Traceback" not in err


def test_artifact_without_a_hash_still_loads(model_dir, tmp_path):
    old = _copy(model_dir, tmp_path / "old")
    meta = json.loads((old / "model.json").read_text())
    del meta[HASH_KEY]
    (old / "model.json").write_text(json.dumps(meta))
    model, loaded = load_model(old)
    assert HASH_KEY not in loaded


def test_the_shipped_model_records_the_hash_of_its_weights():
    meta = json.loads((SHIPPED / "model.json").read_text())
    assert meta[HASH_KEY] == file_sha256(SHIPPED / "model.safetensors")


@pytest.mark.parametrize("dtype, size_ratio", [("float16", 0.6), ("int8", 0.35)])
def test_rounded_storage_shrinks_the_file_and_loads_the_rounded_model(model_dir, tmp_path, dtype, size_ratio):
    import torch
    from safetensors import safe_open

    model, meta = load_model(model_dir)
    meta = {k: v for k, v in meta.items() if k != "extra"}
    x = torch.rand(2, 3, 48, 48)
    round_weights(model, dtype)
    save_model(model, {**meta, "weights_dtype": dtype}, tmp_path / dtype)
    small_file = tmp_path / dtype / "model.safetensors"
    assert small_file.stat().st_size < size_ratio * (model_dir / "model.safetensors").stat().st_size
    with safe_open(str(small_file), "pt") as f:
        stored = {k: f.get_tensor(k).dtype for k in f.keys()}
    network = {k: d for k, d in stored.items() if not k.startswith(("extra.", "int8_scale."))}
    assert torch.float16 in network.values() and torch.float32 not in network.values()
    assert (torch.int8 in network.values()) == (dtype == "int8")
    loaded, loaded_meta = load_model(tmp_path / dtype)
    assert loaded_meta["weights_dtype"] == dtype
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # what was fitted is what loads


def test_int8_storage_rounds_each_weight_to_its_channel_step(model_dir):
    """Per-output-channel symmetric int8: every weight moves by at most half its channel's step (max |w| / 127)."""
    import torch

    original, _ = load_model(model_dir)
    rounded, _ = load_model(model_dir)
    round_weights(rounded, "int8")
    kernels = [(k, w) for k, w in original.state_dict().items() if w.is_floating_point() and w.ndim >= 2]
    assert kernels
    for key, weight in kernels:
        flat = weight.reshape(weight.shape[0], -1)
        step = flat.abs().amax(1, keepdim=True) / 127
        error = (rounded.state_dict()[key].reshape(flat.shape) - flat).abs()
        assert bool((error <= step / 2 + 1e-7).all()), key


def test_an_unknown_weights_dtype_is_refused_in_one_line(model_dir, tmp_path):
    odd = _copy(model_dir, tmp_path / "odd")
    meta = json.loads((odd / "model.json").read_text())
    (odd / "model.json").write_text(json.dumps({**meta, "weights_dtype": "int4"}))
    with pytest.raises(ModelError, match="unknown weights_dtype 'int4'"):
        load_model(odd)


def test_the_shipped_model_fits_the_size_promise():
    """The project keeps every tracked file under 25 MB (the shipped ensemble is stored in float16)."""
    assert (SHIPPED / "model.safetensors").stat().st_size < 25 * 2 ** 20


def test_atomic_writes_keep_the_replaced_files_permissions_or_follow_the_umask(tmp_path):
    import melanoma.artifacts as artifacts

    fresh = tmp_path / "fresh.json"
    old_umask = os.umask(0o022)
    saved, artifacts._UMASK = artifacts._UMASK, 0o022
    try:
        artifacts.atomic_write_text(fresh, "{}")
        assert fresh.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600: a service user must read it
        fresh.chmod(0o640)
        artifacts.atomic_write_text(fresh, "{ }")
        assert fresh.stat().st_mode & 0o777 == 0o640 and fresh.read_text() == "{ }"
    finally:
        artifacts._UMASK = saved
        os.umask(old_umask)
