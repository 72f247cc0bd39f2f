"""train(): both registry models for an epoch on ~45 real images, resume equivalence, 2-process DDP (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from melanoma.artifacts import load_model
from melanoma.config import TrainConfig, load_config
from melanoma.errors import ConfigError
from melanoma.labelmaps import find_melanoma_class
from melanoma.predict import Predictor
from melanoma.training import train

from conftest import make_mini_ham

pytestmark = pytest.mark.slow


def tiny_config(data, out, **overrides) -> TrainConfig:
    """A real config shrunk to a few small batches on CPU."""
    values = dict(data=str(data), out=str(out), model="seed-cnn", image_size=64, epochs=1, batch_size=8,
                  max_train_batches=3, num_workers=0, seed=3, precision="32-true",
                  extra={"bootstrap": 50, "progress_bar": False})
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("model,size", [("seed-cnn", 64), ("efficientnet_lite0", 96)])
def test_train_one_epoch_writes_a_usable_model(tiny_isic, tmp_path, model, size):
    result = train(tiny_config(tiny_isic, tmp_path / "run", model=model, image_size=size))
    run = Path(result["run"])
    for name in ("config.yaml", "data_summary.json", "model.json", "model.safetensors", "val_predictions.csv",
                 "logs/metrics.csv", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    net, meta = load_model(run)
    assert meta["architecture"] == model and len(meta["class_names"]) == 9
    assert meta["preprocessing"]["input_size"] == size
    assert meta["preprocessing"]["color_constancy"] == "shades_of_gray"  # the default: other clinics' colour casts
    assert 0.0 <= meta["thresholds"]["melanoma_alert"] <= 1.0 and meta["temperature"] > 0
    assert meta["model_card"]["intended_use"].startswith("Decision support")
    assert 0.0 <= result["balanced_accuracy"] <= 1.0
    # the machine and precision it trained with: runs pair only within one machine (fastpath.machine)
    recorded = json.loads((run / "result.json").read_text())
    assert recorded["precision"] == "32-true" and recorded["machine"]["cpu"] and recorded["machine"]["threads"] >= 1
    with torch.no_grad():
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 9)
    # the referral scores an intermediate stage too (version 3), and prediction feeds it those statistics
    assert meta["referral"]["layers"] == {"seed-cnn": ["features.12"], "efficientnet_lite0": ["blocks.5"]}[model]
    assert meta["referral"]["version"] == 3 and meta["referral"]["feature_dim"] > meta["referral"]["layer_dim"] > 0
    assert Predictor.load(run).predict_paths(sorted(tiny_isic.rglob("*.jpg"))[:2]).refer.shape == (2,)


class CrashAtEpoch(L.Callback):
    """Simulates a kill after `epoch` finished epochs (their checkpoint is on disk)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


# mixup draws its blends from the per-step seed too; SAM's two passes live inside the optimiser's closure
@pytest.mark.parametrize("recipe", [{}, {"mixup": 0.4}, {"sam": 0.05}], ids=["plain", "mixup", "sam"])
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_isic, tmp_path, recipe):
    train(tiny_config(tiny_isic, tmp_path / "full", epochs=2, **recipe))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_config(tiny_isic, tmp_path / "cut", epochs=2, **recipe), callbacks=[CrashAtEpoch(1)])
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "cut" / "model.json").exists()
    resumed = load_config(tmp_path / "cut" / "config.yaml", resume=str(tmp_path / "cut"))
    train(resumed)
    epochs = {row.split(",")[0] for row in (tmp_path / "cut" / "logs" / "metrics.csv").read_text().splitlines()[1:]}
    assert {"0", "1"} <= epochs, "the epochs logged before the interruption survive the resume"
    full, cut = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert full.keys() == cut.keys()
    for key in full:
        torch.testing.assert_close(full[key], cut[key], rtol=0, atol=1e-6, msg=key)


def test_existing_run_folder_is_never_overwritten(tiny_isic, tmp_path):
    cfg = tiny_config(tiny_isic, tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: seed-cnn\n")
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg)


def test_find_melanoma_class():
    assert find_melanoma_class(["melanoma", "nevus"]) == "melanoma"
    assert find_melanoma_class(["MEL", "NV"]) == "MEL"
    assert find_melanoma_class(["nevus"]) is None


def test_ddp_two_cpu_processes_see_disjoint_samples_and_write_one_model(tiny_isic, tmp_path):
    run = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text("extra: {record_samples: true, bootstrap: 20, progress_bar: false}\n")
    cmd = [sys.executable, "-m", "melanoma", "train", "--data", str(tiny_isic), "--config", str(config),
           "--model", "seed-cnn", "--image-size", "64", "--epochs", "1", "--batch-size", "4",
           "--max-train-batches", "2", "--num-workers", "0", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((run / f"sampled-rank{r}-epoch0.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # Balanced sampling draws with replacement, so compare draw positions: rank r gets draws r, r+2, r+4...
    seen0, seen1 = ranks[0]["indices"], ranks[1]["indices"]
    assert len(seen0) == len(seen1) > 0
    assert seen0 != seen1
    assert sorted(p.name for p in run.glob("**/model.json")) == ["model.json"]
    assert json.loads((run / "model.json").read_text())["training"]["devices"] == "2"


def test_extra_data_only_trains_and_is_recorded(tiny_isic, ham_dir, tmp_path):
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 40)
    cfg = tiny_config(tiny_isic, tmp_path / "run", extra_data=[str(ham)], samples_per_epoch=16,
                      color_constancy="shades_of_gray", detail_size=150,
                      max_train_batches=None, lesion_metadata=str(ham_dir / "HAM10000_metadata.csv"))
    result = train(cfg)
    run = Path(result["run"])
    summary = json.loads((run / "data_summary.json").read_text())["extra"]
    assert 0 < summary["n_images"] <= 40 and summary["sources"][0]["mapped"] == 40
    meta = json.loads((run / "model.json").read_text())
    assert meta["data"]["extra_sources"] == [str(ham.resolve())] and Path(meta["data"]["source"]).is_absolute()
    assert meta["preprocessing"]["color_constancy"] == "shades_of_gray" and meta["preprocessing"]["detail_size"] == 150
    _, loaded = load_model(run)  # every image of both sources is fingerprinted, also those training left out
    assert len(loaded["extra"]["fingerprint.pixel"]) == 45 + 40
    predicted = (run / "val_predictions.csv").read_text()
    assert str(tiny_isic) in predicted and str(ham) not in predicted and "/images/" not in predicted
    rows = [r for r in (run / "logs" / "metrics.csv").read_text().splitlines() if r.startswith("0,")]
    assert max(int(r.split(",")[2]) for r in rows) <= 2  # 16 samples per epoch = 2 steps of 8


# --- real kills: a `melanoma train` subprocess killed at a random moment, resumed from another folder ----------
KILL_EPOCHS, KILL_BATCHES = 3, 4  # 12 optimiser steps


def _train_command(data, out, config) -> list[str]:
    return [sys.executable, "-m", "melanoma", "train", "--data", str(data), "--out", str(out), "--config",
            str(config), "--model", "seed-cnn", "--image-size", "64", "--epochs", str(KILL_EPOCHS),
            "--batch-size", "8", "--max-train-batches", str(KILL_BATCHES), "--num-workers", "0", "--seed", "5",
            "--precision", "32-true"]


def _kill_config(tmp_path: Path, marker: Path | None = None) -> Path:
    extra = {"bootstrap": 30, "progress_bar": False}
    if marker is not None:
        extra.update(step_marker=str(marker), step_pause=0.4)
    path = tmp_path / f"config-{'marker' if marker else 'plain'}.yaml"
    path.write_text(json.dumps({"extra": extra}))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def uninterrupted_run(tiny_isic, tmp_path_factory) -> Path:
    import time

    root = tmp_path_factory.mktemp("uninterrupted")
    started = time.time()
    done = subprocess.run(_train_command(tiny_isic, root / "run", _kill_config(root)), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (root / "seconds").write_text(str(time.time() - started))  # how long a whole run takes here
    return root / "run"


def _step_reached(marker) -> int:
    """The step the training process last wrote into `marker`; -1 before the first write or while it is being
    rewritten (read once: two reads could straddle the rewrite and see an empty file)."""
    text = marker.read_text().strip() if marker.exists() else ""
    return int(text) if text.isdigit() else -1


def _wait_for(predicate, proc, seconds=300.0) -> None:
    import time

    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"training ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out waiting for the moment to kill"
        time.sleep(0.02)


def _val_rows(run: Path) -> list[tuple[int, str]]:
    import csv

    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return [(int(float(r["epoch"])), r["val/bal_acc"]) for r in rows if r.get("val/bal_acc")]


def _assert_same_run(resumed: Path, reference: Path) -> None:
    full, cut = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert full.keys() == cut.keys()
    for key in full:
        torch.testing.assert_close(cut[key], full[key], rtol=0, atol=1e-6, msg=key)
    ref, res = (json.loads((run / "result.json").read_text()) for run in (reference, resumed))
    for key in ("balanced_accuracy", "melanoma_auc", "best_epoch", "epochs_run", "melanoma_alert", "temperature"):
        assert res.get(key) == pytest.approx(ref.get(key), abs=1e-6), key
    # every finished epoch logged exactly once, with the uninterrupted run's validation figures
    assert _val_rows(resumed) == _val_rows(reference)


@pytest.mark.parametrize("how", ["sigkill-mid-epoch", "sigterm-mid-epoch", "sigkill-finalising", "sigkill-any-time"])
def test_killed_training_resumes_from_another_folder_to_the_same_model(how, tiny_isic, tmp_path, uninterrupted_run):
    import random
    import signal
    import time

    marker = tmp_path / "step"
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(_train_command(tiny_isic, run, _kill_config(tmp_path, marker)), text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rng = random.Random()
    if how.endswith("mid-epoch"):  # after a random optimiser step that does not end an epoch
        step = rng.choice([s for s in range(1, KILL_EPOCHS * KILL_BATCHES) if s % KILL_BATCHES])
        _wait_for(lambda: _step_reached(marker) >= step, proc)
    elif how == "sigkill-finalising":
        _wait_for(lambda: (run / "training_done.json").exists(), proc)
    else:  # any moment once the run exists: scanning, decoding, training, validating, finalising
        whole = float((uninterrupted_run.parent / "seconds").read_text())
        _wait_for(lambda: (run / "config.yaml").exists(), proc)
        time.sleep(rng.uniform(0.0, 0.5 * whole))  # start-up is part of `whole` but comes before config.yaml
    proc.send_signal(signal.SIGTERM if how.startswith("sigterm") else signal.SIGKILL)
    proc.wait(timeout=120)
    assert "Traceback" not in proc.stderr.read()
    if (run / "result.json").exists():  # a random kill may come after the end: then there is nothing to resume
        pytest.skip("the run finished before the random kill")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run([sys.executable, "-m", "melanoma", "train", "--resume", "../runs/killed"],
                             cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(run, uninterrupted_run)


def test_resume_refuses_options_that_would_change_the_run(uninterrupted_run, tmp_path):
    cmd = [sys.executable, "-m", "melanoma", "train", "--resume", str(uninterrupted_run), "--epochs", "9",
           "--lr", "0.1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "--epochs" in done.stderr and "--lr" in done.stderr


def test_run_config_stores_absolute_paths(uninterrupted_run):
    saved = load_config(uninterrupted_run / "config.yaml")
    assert Path(saved.data).is_absolute() and Path(saved.out).is_absolute()


# --- weight averaging, leave-one-source-out, fast path ------------------------------------------------------------


def _network_weights(run: Path) -> dict:
    """The network's tensors of a model file (without the referral/fingerprint tensors stored beside them)."""
    return {k: v for k, v in load_file(run / "model.safetensors").items() if not k.startswith("extra.")}


def test_ema_validates_and_ships_the_averaged_weights(tiny_isic, tmp_path):
    result = train(tiny_config(tiny_isic, tmp_path / "ema", epochs=2, ema=0.9))
    run = Path(result["run"])
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    shipped = _network_weights(run)
    averaged = {k[len("model."):]: v for k, v in best["state_dict"].items() if k.startswith("model.")}
    for key, value in shipped.items():
        torch.testing.assert_close(value, averaged[key], msg=key)
    assert json.loads((run / "model.json").read_text())["training"]["ema"] == 0.9


def test_swa_ships_the_average_of_the_last_epochs_with_recomputed_bn(tiny_isic, tmp_path):
    cfg = tiny_config(tiny_isic, tmp_path / "swa", epochs=3, swa_epochs=1, swa_lr=0.5)
    result = train(cfg)
    run = Path(result["run"])
    # --swa-lr: the cosine decay ends at the window's start, at half the peak, and the rate stays there
    import csv
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    lrs = {int(r["step"]): float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")}  # logged as each epoch starts
    assert lrs[6] == pytest.approx(0.5 * cfg.lr) and lrs[3] > 0.5 * cfg.lr  # 3 steps per epoch
    swa = torch.load(run / "checkpoints" / "swa.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    shipped = _network_weights(run)
    bn_means = [k for k in shipped if k.endswith("running_mean")]
    assert bn_means, "seed-cnn has batch norm"
    for key in shipped:
        torch.testing.assert_close(shipped[key], swa["model." + key], msg=key)
    # the statistics were recomputed for the averaged weights, not carried over from the last step
    assert any(not torch.equal(shipped[k], last["state_dict"]["model." + k]) for k in bn_means)
    assert json.loads((run / "model.json").read_text())["training"]["swa_epochs"] == 1
    with pytest.raises(ConfigError, match="--swa-lr needs --swa-epochs"):
        tiny_config(tiny_isic, tmp_path / "bad", swa_lr=0.5).validate()


def test_holdout_source_trains_on_the_others_and_validates_on_it(tiny_isic, ham_dir, tmp_path):
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 30, dx=("mel", "nv", "bcc"))
    cfg = tiny_config(tiny_isic, tmp_path / "loso", extra_data=[str(ham)], holdout_source="ham",
                      lesion_metadata=str(ham_dir / "HAM10000_metadata.csv"))
    result = train(cfg)
    run = Path(result["run"])
    validated = (run / "val_predictions.csv").read_text()
    assert str(ham) in validated and str(tiny_isic) not in validated
    assert result["n_train"] <= 45 and result["n_val"] > 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["training"]["holdout_source"] == "ham"
    # the card's limitations describe this model's data, not a stock text
    assert "the held-out source ham" in meta["model_card"]["limitations"]
    assert "images only" in meta["model_card"]["limitations"]
    with pytest.raises(ConfigError, match="not a training source"):
        train(tiny_config(tiny_isic, tmp_path / "bad", extra_data=[str(ham)], holdout_source="nowhere"))


def test_fast_path_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    from melanoma import fastpath

    monkeypatch.setenv("MELANOMA_CACHE_DIR", str(tmp_path))
    chosen = fastpath.choose_cpu_precision("seed-cnn", 64, 4)
    assert chosen in fastpath.CANDIDATES
    monkeypatch.setattr(fastpath, "step_seconds", lambda *a, **k: pytest.fail("measured twice"))
    assert fastpath.choose_cpu_precision("seed-cnn", 64, 4) == chosen
    cached = json.loads((tmp_path / "fastpath.json").read_text())
    assert [entry["precision"] for entry in cached.values()] == [chosen]


def test_val_sources_all_validates_on_every_source_and_states_the_alert_share(tiny_isic, ham_dir, tmp_path):
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 20, dx=("mel", "nv"))
    cfg = tiny_config(tiny_isic, tmp_path / "pooled", extra_data=[str(ham)], val_sources="all",
                      lesion_metadata=str(ham_dir / "HAM10000_metadata.csv"))
    run = Path(train(cfg)["run"])
    validated = (run / "val_predictions.csv").read_text()
    assert str(ham) in validated and str(tiny_isic) in validated
    card = json.loads((run / "model.json").read_text())["model_card"]
    assert card["validated_on"] == "a group-aware share of every training source"
    shares = card["expected_alert_share"]
    assert set(shares) == {"referral clinic (10% melanoma)", "screening (2% melanoma)"}
    assert all(0.0 <= v <= 1.0 for v in shares.values())


def test_cv_run_ships_its_fold_ensemble_as_one_model(tiny_isic, tmp_path):
    result = train(tiny_config(tiny_isic, tmp_path / "cv", folds=2, fold_ensemble=True))
    meta = json.loads((Path(result["ensemble"]) / "model.json").read_text())
    assert meta["architecture"].startswith("ensemble(") and meta["architecture"].count(",") == 1
    assert meta["training"]["folds"] == 2 and meta["training"]["member_seeds"] == [3, 3]  # what members share
    net, _ = load_model(result["ensemble"])
    with torch.no_grad():
        probs = net(torch.zeros(2, 3, 64, 64)).softmax(-1)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    with pytest.raises(ConfigError, match="--fold-ensemble needs --folds"):
        train(tiny_config(tiny_isic, tmp_path / "bad", fold_ensemble=True))


def test_coarse_labels_backbone_lr_and_split_seed(tiny_isic, ham_dir, tmp_path):
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 40, dx=("akiec", "bkl", "mel"))
    common = dict(extra_data=[str(ham)], lesion_metadata=str(ham_dir / "HAM10000_metadata.csv"),
                  val_sources="all", split_seed=7, model="efficientnet_lite0", image_size=64, pretrained=False,
                  coarse_labels=True)
    a = train(tiny_config(tiny_isic, tmp_path / "a", backbone_lr_scale=0.1, seed=1, weight_decay=0.05, **common))
    b = train(tiny_config(tiny_isic, tmp_path / "b", seed=2, **common))
    summary = json.loads((Path(a["run"]) / "data_summary.json").read_text())
    assert summary["extra"]["sources"][0]["coarse"] > 0  # akiec and bkl rows train as coarse labels
    validated = [(Path(r) / "val_predictions.csv").read_text().splitlines() for r in (a["run"], b["run"])]
    paths = [sorted(line.split(",")[0] for line in rows[1:]) for rows in validated]
    assert paths[0] == paths[1]  # one split seed, two seeds: the same validation images
    ckpt = torch.load(Path(a["run"]) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    head, backbone = (group["lr"] for group in ckpt["optimizer_states"][0]["param_groups"])
    assert backbone == pytest.approx(head * 0.1)
    for run, decay in ((a, 0.05), (b, 0.01)):  # --weight-decay reaches AdamW; the default is 0.01
        ckpt = torch.load(Path(run["run"]) / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
        assert {group["weight_decay"] for group in ckpt["optimizer_states"][0]["param_groups"]} == {decay}


def test_weight_decay_default_depends_on_the_model_and_a_given_value_is_kept():
    """seed-cnn has its own L2 term, so it gets no decoupled decay unless asked; the others 0.01."""
    from melanoma.training import resolve_defaults

    assert resolve_defaults(TrainConfig(model="seed-cnn")).weight_decay == 0.0
    assert resolve_defaults(TrainConfig(model="efficientnet_lite0")).weight_decay == 0.01
    assert resolve_defaults(TrainConfig(model="seed-cnn", weight_decay=0.02)).weight_decay == 0.02
    with pytest.raises(ConfigError, match="weight decay must be >= 0"):
        TrainConfig(data="x", model="efficientnet_lite0", weight_decay=-0.1).validate()


def test_rank_loss_must_be_non_negative_and_not_combined_with_mixup():
    with pytest.raises(ConfigError, match="ranking loss weight must be >= 0"):
        TrainConfig(data="x", model="efficientnet_lite0", rank_loss=-1.0).validate()
    with pytest.raises(ConfigError, match="--rank-loss and --mixup"):
        TrainConfig(data="x", model="efficientnet_lite0", rank_loss=1.0, mixup=0.2).validate()


class _SnapshotEachEpoch(L.Callback):
    """Copies of the backbone, head and BN running statistics at the start of training and after each epoch."""

    def __init__(self):
        self.states = []

    def _snap(self, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_start(self, trainer, pl_module):
        self._snap(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self._snap(pl_module)


def test_linear_probe_epochs_train_the_head_only_then_everything(tiny_isic, tmp_path):
    snapshots = _SnapshotEachEpoch()
    train(tiny_config(tiny_isic, tmp_path / "lpft", model="efficientnet_lite0", image_size=64, pretrained=False,
                      epochs=2, linear_probe_epochs=1), callbacks=[snapshots])
    start, probed, tuned = snapshots.states
    head = {k for k in start if k.startswith("classifier.")}
    backbone = [k for k in start if k not in head and start[k].is_floating_point()]
    assert head and all(not torch.equal(start[k], probed[k]) for k in head if k.endswith("weight"))
    # epoch 0: the backbone, BN running statistics included, is exactly as it started
    assert all(torch.equal(start[k], probed[k]) for k in backbone)
    # epoch 1: everything learns
    assert any(not torch.equal(probed[k], tuned[k]) for k in backbone if k.endswith("conv_stem.weight"))
    assert any(not torch.equal(probed[k], tuned[k]) for k in backbone if k.endswith("running_mean"))
    with pytest.raises(ConfigError, match="linear-probe epochs must be between 0 and epochs - 1"):
        tiny_config(tiny_isic, tmp_path / "bad", epochs=2, linear_probe_epochs=2).validate()


def test_freeze_bn_keeps_the_pretrained_statistics_while_everything_else_learns(tiny_isic, tmp_path):
    snapshots = _SnapshotEachEpoch()  # with LP-FT too: its fine-tuning phase must not switch batch norm back on
    train(tiny_config(tiny_isic, tmp_path / "frozen", model="efficientnet_lite0", image_size=64, pretrained=False,
                      epochs=2, linear_probe_epochs=1, freeze_bn=True), callbacks=[snapshots])
    start, _, tuned = snapshots.states
    statistics = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(start[k], tuned[k]) for k in statistics)
    assert not torch.equal(start["conv_stem.weight"], tuned["conv_stem.weight"])
    assert not torch.equal(start["bn1.weight"], tuned["bn1.weight"])  # BN scale and shift still learn
    with pytest.raises(ConfigError, match="--swa-epochs recomputes them"):
        tiny_config(tiny_isic, tmp_path / "bad", epochs=2, freeze_bn=True, swa_epochs=1).validate()
    with pytest.raises(ConfigError, match="label smoothing must be in"):
        tiny_config(tiny_isic, tmp_path / "bad", label_smoothing=1.0).validate()


def test_freeze_early_stages_keeps_the_stem_and_first_stages_exactly_as_pretrained(tiny_isic, tmp_path):
    snapshots = _SnapshotEachEpoch()
    train(tiny_config(tiny_isic, tmp_path / "early", model="efficientnet_lite0", image_size=64, pretrained=False,
                      epochs=2, linear_probe_epochs=1, freeze_early_stages=2), callbacks=[snapshots])
    start, _, tuned = snapshots.states  # LP-FT's fine-tuning phase must not unfreeze them
    early = [k for k in start if k.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))]
    later = [k for k in start if k.startswith("blocks.2.") and k.endswith(("weight", "running_mean"))]
    assert early and all(torch.equal(start[k], tuned[k]) for k in early)  # weights and BN statistics
    assert later and all(not torch.equal(start[k], tuned[k]) for k in later)
    with pytest.raises(ConfigError, match="frozen early stages must be >= 0"):
        tiny_config(tiny_isic, tmp_path / "bad", freeze_early_stages=-1).validate()
    with pytest.raises(ConfigError, match="--freeze-early-stages needs an EfficientNet"):
        train(tiny_config(tiny_isic, tmp_path / "cnn", model="seed-cnn", epochs=1, freeze_early_stages=1))
    with pytest.raises(ConfigError, match="--freeze-early-stages 8: the model has 7 stages"):
        train(tiny_config(tiny_isic, tmp_path / "deep", model="efficientnet_lite0", image_size=64, pretrained=False,
                          epochs=1, freeze_early_stages=8))


def test_auto_named_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    from melanoma.training import new_run_dir

    monkeypatch.chdir(tmp_path)
    first, second = new_run_dir("runs/lite0-20261201-101500"), new_run_dir("runs/lite0-20261201-101500")
    assert first.name == "lite0-20261201-101500" and second.name == "lite0-20261201-101500-2"
    assert first.is_dir() and second.is_dir()
