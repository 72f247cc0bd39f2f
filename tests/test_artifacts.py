"""Model integrity: model.json records the SHA-256 of model.safetensors; a damaged weights file is refused;
float16 weight storage halves the file and loads back exactly as the rounded float32 model."""

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


def test_float16_storage_halves_the_file_and_loads_the_rounded_model(model_dir, tmp_path):
    import torch
    from safetensors import safe_open

    model, meta = load_model(model_dir)
    meta = {k: v for k, v in meta.items() if k != "extra"}
    x = torch.rand(2, 3, 48, 48)
    round_weights(model, "float16")
    save_model(model, {**meta, "weights_dtype": "float16"}, tmp_path / "half")
    half_file = tmp_path / "half" / "model.safetensors"
    assert half_file.stat().st_size < 0.6 * (model_dir / "model.safetensors").stat().st_size
    with safe_open(str(half_file), "pt") as f:
        stored = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in stored and torch.float32 not in stored
    loaded, loaded_meta = load_model(tmp_path / "half")
    assert loaded_meta["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)  # what was fitted is what loads


def test_an_unknown_weights_dtype_is_refused_in_one_line(model_dir, tmp_path):
    odd = _copy(model_dir, tmp_path / "odd")
    meta = json.loads((odd / "model.json").read_text())
    (odd / "model.json").write_text(json.dumps({**meta, "weights_dtype": "int4"}))
    with pytest.raises(ModelError, match="unknown weights_dtype 'int4'"):
        load_model(odd)


def test_the_shipped_model_fits_the_size_promise():
    """The project keeps every tracked file under 25 MB (the shipped ensemble is stored in float16)."""
    assert (SHIPPED / "model.safetensors").stat().st_size < 25 * 2 ** 20
