"""Extra training sources: label mapping, reference labels settling conflicts, leak-free joining, splits, sampling."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from melanoma import data
from melanoma.config import TrainConfig
from melanoma.datamodule import SeededSampler
from melanoma.errors import ConfigError
from melanoma.sources import holdout_source_split, load_extra_sources, primary_indices, splits_with_extras


def _jpeg(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, "JPEG", quality=95)
    return path


def _two_sources(tmp_path: Path) -> tuple[Path, Path]:
    """A 9-class-style primary folder and a HAM10000-style extra folder that share some images and lesions.

    ISIC_0000100 is filed under actinic keratosis AND nevus (HAM: akiec); ISIC_0000101 is squamous cell carcinoma
    (HAM: akiec, compatible); ISIC_0000102 is filed as nevus but HAM says akiec (contradicted); ISIC_0000103 is a
    primary melanoma whose lesion HAM_M has a second, different photo ISIC_0000203 in HAM.
    """
    primary, ham = tmp_path / "primary", tmp_path / "ham"
    dup = _jpeg(primary / "actinic keratosis" / "ISIC_0000100.jpg", seed=100)
    shutil.copy(dup, _parent(primary / "nevus" / "ISIC_0000100.jpg"))
    _jpeg(primary / "squamous cell carcinoma" / "ISIC_0000101.jpg", seed=101)
    _jpeg(primary / "nevus" / "ISIC_0000102.jpg", seed=102)
    _jpeg(primary / "melanoma" / "ISIC_0000103.jpg", seed=103)
    for i, cls in enumerate(["actinic keratosis", "melanoma", "nevus", "squamous cell carcinoma"] * 3):
        _jpeg(primary / cls / f"ISIC_00000{10 + i}.jpg", seed=10 + i)
    rows = ["lesion_id,image_id,dx"]
    for stem in ("ISIC_0000100", "ISIC_0000101", "ISIC_0000102"):  # HAM's copies of primary images
        shutil.copy(next(primary.glob(f"*/{stem}.jpg")), _parent(ham / "images" / f"{stem}.jpg"))
        rows.append(f"HAM_{stem[-3:]},{stem},akiec")
    _jpeg(ham / "images" / "ISIC_0000203.jpg", seed=203)
    rows.append("HAM_M,ISIC_0000203,mel")
    rows.append("HAM_M,ISIC_0000103,mel")  # the primary melanoma's lesion (its image file is not in this HAM copy)
    for i, dx in enumerate(["nv", "nv", "mel", "akiec", "bkl"]):
        _jpeg(ham / "images" / f"ISIC_00003{i:02d}.jpg", seed=300 + i)
        rows.append(f"HAM_X{i},ISIC_00003{i:02d},{dx}")
    (ham / "HAM10000_metadata.csv").write_text("\n".join(r for r in rows if "ISIC_0000103" not in r) + "\n")
    (tmp_path / "lesions.csv").write_text("\n".join(rows) + "\n")
    return primary, ham


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _prepare(tmp_path, policy):
    primary, ham = _two_sources(tmp_path)
    table = data.discover(primary)
    extras = load_extra_sources([ham], "auto", table.classes)
    lesions = data.read_lesion_ids(tmp_path / "lesions.csv")
    return data.prepare_training_table(table, conflict_policy=policy, workers=1, lesion_ids=lesions,
                                       near_distance=None, extras=extras)


def test_reference_labels_settle_conflicts_and_extras_join_without_leaks(tmp_path):
    prepared, summary = _prepare(tmp_path, "reference")
    by_stem = {}
    for s in prepared.samples:
        by_stem.setdefault(s.path.stem, []).append(s)
    assert [s.label for s in by_stem["ISIC_0000100"]] == ["actinic keratosis"]  # nevus copy lost to HAM's akiec
    assert [s.label for s in by_stem["ISIC_0000101"]] == ["squamous cell carcinoma"]  # akiec allows it
    assert "ISIC_0000102" not in by_stem  # a nevus that HAM calls akiec is dropped, not trained on
    assert summary["n_conflict_groups_settled_by_reference"] == 1
    assert summary["n_groups_contradicted_by_reference"] == 1
    # HAM copies of primary images and HAM photos of a primary lesion never join; akiec is reference only
    extra = {s.path.stem: s for s in by_stem_values(by_stem) if s.origin is not None}
    assert set(extra) == {"ISIC_0000300", "ISIC_0000301", "ISIC_0000302"}
    assert extra["ISIC_0000302"].label == "melanoma" and extra["ISIC_0000300"].label == "nevus"
    assert summary["extra"]["removed"] == {"shares_a_group_with_primary": 4, "reference_only": 1}
    # bkl would be pigmented benign keratosis, a class this primary set lacks: left out and counted
    assert summary["extra"]["sources"][0]["unmapped_labels"] == {"bkl": 1}
    assert summary["extra"]["counts"]["nevus"] == 2 and summary["n_images"] == len(primary_indices(prepared))


def test_holding_out_the_primary_source_validates_only_on_its_own_images(tmp_path):
    """Images both sources hold (picture or lesion) neither train nor validate when either source is held out:
    the held-out source validates only on images no training source has (the 9-class split's HAM10000 copies made
    two-thirds of its leave-one-source-out validation set before session 9) and no image it holds trains."""
    prepared, _ = _prepare(tmp_path, "reference")
    shared = {s.path.stem for s in prepared.samples if s.also_in is not None}
    assert shared == {"ISIC_0000100", "ISIC_0000101", "ISIC_0000103"}  # HAM copies + the melanoma whose lesion HAM has
    assert all(Path(s.also_in).name == "ham" for s in prepared.samples if s.also_in)
    train, val = holdout_source_split(prepared, "primary", str(tmp_path / "primary"), None, seed=0)
    stems = lambda idx: {prepared.samples[i].path.stem for i in idx}  # noqa: E731
    assert not shared & (stems(val) | stems(train))
    assert all(prepared.samples[i].origin is None for i in val) and len(val) == len(primary_indices(prepared)) - 3
    assert all(prepared.samples[i].origin is not None for i in train)
    # holding HAM out: the primary images HAM holds too do not train (nor validate: HAM's copies were never kept)
    train, val = holdout_source_split(prepared, "ham", str(tmp_path / "primary"), None, seed=0)
    assert all(prepared.samples[i].origin is not None for i in val) and not shared & (stems(val) | stems(train))
    assert all(prepared.samples[i].origin is None for i in train)
    assert len(train) == len(primary_indices(prepared)) - 3


def by_stem_values(by_stem):
    return [s for samples in by_stem.values() for s in samples]


def test_drop_policy_still_drops_the_conflict_and_extras_only_ever_train(tmp_path):
    prepared, summary = _prepare(tmp_path, "drop")
    assert not any(s.path.stem == "ISIC_0000100" for s in prepared.samples)
    assert any(s.path.stem == "ISIC_0000102" for s in prepared.samples)  # reported, not acted on
    assert summary["n_groups_contradicted_by_reference"] == 1
    extra = set(np.setdiff1d(np.arange(len(prepared)), primary_indices(prepared)))
    assert len(extra) == 3
    for train_idx, val_idx in splits_with_extras(prepared, 2, 0.2, seed=0):
        assert extra <= set(train_idx.tolist()) and not extra & set(val_idx.tolist())
        assert all(prepared.samples[i].origin is None for i in val_idx)
    plain = data.stratified_group_kfold(prepared.subset(primary_indices(prepared)), 2, 0)
    with_extras = splits_with_extras(prepared, 2, 0.2, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(plain, with_extras))  # same validation folds


def test_source_balanced_sampler_gives_each_source_half_of_a_shared_class():
    labels = np.array([0] * 10 + [1] * 90 + [1] * 10)  # class 1: 90 extra images, 10 primary ones
    sources = np.array([0] * 10 + [1] * 90 + [0] * 10)
    sampler = SeededSampler(labels, balanced=True, seed=0, sources=sources, samples_per_epoch=20_000)
    drawn = np.array(sampler.epoch_indices())
    assert len(drawn) == 20_000
    assert abs((labels[drawn] == 0).mean() - 0.5) < 0.02
    assert abs((drawn >= 100).mean() - 0.25) < 0.02  # the 10 primary images of class 1 get a quarter


def test_source_balanced_natural_mix_keeps_class_shares_and_equalises_sources_within_a_class():
    labels = np.array([0] * 10 + [1] * 90 + [1] * 10)  # class 1: 90 extra images, 10 primary ones
    sources = np.array([0] * 10 + [1] * 90 + [0] * 10)
    sampler = SeededSampler(labels, balanced=True, seed=0, sources=sources, samples_per_epoch=20_000,
                            natural_classes=True)
    drawn = np.array(sampler.epoch_indices())
    assert abs((labels[drawn] == 0).mean() - 10 / 110) < 0.01  # class 0 keeps its natural share
    assert abs((drawn >= 100).mean() - 50 / 110) < 0.02  # half of class 1: its 10 primary images equal the 90 extra


def test_noise_match_runs_inside_the_seeded_training_set_of_a_two_source_datamodule():
    """augmentation noise-match: the training set adds the per-source noise before the preset, reproducibly for a
    (seed, epoch, index), so a resumed run sees the same views; validation images stay as they are; with one
    source it matches nothing."""
    import torch

    from melanoma.datamodule import LesionDataModule
    from melanoma.transforms import SourceNoiseMatch

    rng = np.random.default_rng(0)
    smooth = np.add.outer(np.linspace(60, 200, 40), np.linspace(0, 20, 48))[..., None] * [1.0, 0.8, 0.7]
    images = [torch.from_numpy(np.clip(smooth + rng.normal(0, 3.0 * (i < 6), (40, 48, 1)), 0, 255).astype(np.uint8))
              .permute(2, 0, 1).contiguous() for i in range(12)]
    pre = {"input_size": 32, "resize": 36, "mean": [0.5] * 3, "std": [0.5] * 3}

    def module(sources):
        return LesionDataModule(images, np.array([0, 1] * 6), np.arange(10), np.arange(10, 12), pre, 4,
                                balanced=False, seed=3, num_workers=0, sources=sources, augmentation="noise-match")
    dm = module(np.array([0] * 6 + [1] * 6))
    train = dm.train_dataloader().dataset
    assert isinstance(train.before, SourceNoiseMatch) and np.isnan(train.before.own[:6]).all()
    assert torch.equal(train[7][0], train[7][0])
    assert dm.val_dataloader().dataset.before is None
    assert module(np.zeros(12, dtype=np.int64)).train_dataloader().dataset.before is None


def test_bad_maps_and_reference_without_extras_are_config_errors(tmp_path):
    primary, ham = _two_sources(tmp_path)
    classes = data.discover(primary).classes
    bad = tmp_path / "map.yaml"
    bad.write_text("nv: naevus\n")
    with pytest.raises(ConfigError, match="'naevus', which is not a class"):
        load_extra_sources([ham], bad, classes)
    with pytest.raises(ConfigError, match="not a preset"):
        load_extra_sources([ham], tmp_path / "missing.yaml", classes)
    with pytest.raises(ConfigError, match="needs --extra-data"):
        TrainConfig(data=str(primary), conflict_policy="reference").validate()


def test_data_and_sources_do_not_import_each_other():
    """One direction only: sources (joining datasets) builds on data (reading and splitting one); a cycle would
    break whichever module is imported first."""
    import ast
    import subprocess
    import sys

    def imported(module: str) -> set[str]:
        tree = ast.parse(Path(data.__file__).with_name(f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):  # every import, module level or inside a function
            if isinstance(node, ast.ImportFrom) and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
        return names

    assert not any("sources" in name for name in imported("data"))
    assert "melanoma.data" in imported("sources")
    for first in ("melanoma.sources", "melanoma.data"):
        code = f"import sys, {first}; print('melanoma.sources' in sys.modules)"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ("True" if first == "melanoma.sources" else "False")


def test_coarse_labels_train_through_their_classes_and_never_validate(ham_dir, tmp_path):
    from conftest import make_mini_ham
    from melanoma.sources import coarse_indices, loss_targets

    ham = make_mini_ham(ham_dir, tmp_path / "ham", 6, dx=("akiec", "bkl", "mel"))
    classes = ["actinic keratosis", "melanoma", "pigmented benign keratosis", "seborrheic keratosis",
               "squamous cell carcinoma"]
    off, = load_extra_sources([ham], "auto", classes)
    assert off.summary["reference_only"] == 6 and off.summary["coarse"] == 0  # akiec: reference only
    assert {s.label for s in off.samples if s.label} == {"melanoma", "pigmented benign keratosis"}
    on, = load_extra_sources([ham], "auto", classes, coarse=True)
    assert on.summary["coarse"] == 12 and on.summary["reference_only"] == 0
    allowed = {s.allowed for s in on.samples}
    assert allowed == {None, ("actinic keratosis", "squamous cell carcinoma"),
                       ("pigmented benign keratosis", "seborrheic keratosis")}
    # with a primary dataset: coarse images always train, even when the extra source validates too
    primary = [data.Sample(tmp_path / f"p{i}.jpg", classes[i % 5], f"p{i}") for i in range(40)]
    table = data.DatasetTable(tmp_path, "folders", classes, primary + list(on.samples))
    coarse = set(coarse_indices(table).tolist())
    assert len(coarse) == 12
    (tr, va), = splits_with_extras(table, None, 0.3, 0, validate_extras=True)
    assert coarse <= set(tr.tolist()) and not coarse & set(va.tolist())
    assert any(table.samples[i].origin for i in va)  # the extra source's fine labels do validate
    targets, groups = loss_targets(table)
    assert groups == [[0, 4], [2, 3]]
    assert sorted(set(targets[sorted(coarse)].tolist())) == [5, 6]
    assert all(targets[i] == classes.index(s.label) for i, s in enumerate(table.samples) if s.allowed is None)
