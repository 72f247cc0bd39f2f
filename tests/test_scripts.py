"""The reproducible recipes in scripts/: their command lines run (two CPU steps on tiny copies of the data)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_mini_ham

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_default_recipe_smoke_runs_on_cpu(tiny_isic, ham_dir, tmp_path):
    """The shipped recipe's command lines (IMBALANCE=source-balanced, the natural class mix with the sources equal
    within a class: the shipped default since session 23): its members need no prior correction and
    train_default.sh applies none. (The sampler's members get the training-mix correction through the same
    `--prior-correction auto`: tests/test_finalize.py, without training two more members here.)"""
    # 40 + 40: the HAM10000 validation share holds the >= 5 melanomas the per-source threshold needs
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 40, dx=("mel", "nv"))
    env = {**os.environ, "DEVICE": "gpu", "SMOKE": "1", "MEMBERS": "2", "DATA": str(tiny_isic), "HAM": str(ham),
           "MELANOMA": str(Path(sys.executable).parent / "melanoma")}
    out = tmp_path / "default-gpu"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "train_default.sh"), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(out.glob("*.log")))
    assert done.returncode == 0, logs or done.stderr
    members = [json.loads((out / f"seed{s}" / "model.json").read_text())["training"] for s in (1, 2)]
    for training in members:
        assert training["accelerator"] == "cpu" and training["precision"] == "32-true"
        assert training["conflict_policy"] == "reference"
        assert training["color_constancy"] == "shades_of_gray_standardised"  # the shipped members' since session 41
        assert training["extra_data"] == [str(ham)] and training["val_sources"] == "all"
        assert training["split_seed"] == 42
    assert [t["seed"] for t in members] == [1, 2]
    for s in (1, 2):  # the shipped default's level of detail (scripts/default_recipe.sh) reaches every member
        assert json.loads((out / f"seed{s}" / "model.json").read_text())["preprocessing"]["detail_size"] == 150
    ensemble = json.loads((out / "ensemble" / "model.json").read_text())
    assert ensemble["architecture"] == "ensemble(efficientnet_lite0,efficientnet_lite0)"
    assert ensemble["weights_dtype"] == "int8" and ensemble["referral"]["threshold_policy"] in ("pooled",
                                                                                               "worst source")
    shipped = json.loads((out / "shipped" / "model.json").read_text())
    assert shipped["thresholds"]["melanoma_alert_policy"] == "worst source"
    assert [t["imbalance"] for t in members] == ["source-balanced", "source-balanced"]
    assert not shipped.get("prior_correction")
    assert [lv["shorter_side"] for lv in shipped["detail_calibration"]["levels"]] == [135, 120, 100]
    assert shipped["test_time_augmentation"] == {"views": 8, "fitted_on": "validation"}  # TTA_VIEWS' default


def test_loso_ensemble_scores_the_mean_of_seeds_on_shared_images(tmp_path):
    """Two seeds that each rank a different half of the melanomas right: the mean of their probabilities ranks
    every one right (AUC 1.0) while each seed alone does not; images only one seed validated are left out."""
    truth = [True] * 4 + [False] * 4
    seeds = {1: [0.9, 0.9, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3], 2: [0.1, 0.1, 0.9, 0.9, 0.3, 0.3, 0.3, 0.3]}
    for seed, probs in seeds.items():
        run = tmp_path / f"base-seed{seed}"
        run.mkdir()
        (run / "result.json").write_text("{}")
        rows = ["path,melanoma_probability,label"] + [
            f"/img{i}.jpg,{p},{'melanoma' if t else 'nevus'}" for i, (p, t) in enumerate(zip(probs, truth))]
        rows.append(f"/only-seed{seed}.jpg,0.5,nevus")
        (run / "val_predictions.csv").write_text("\n".join(rows) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "loso_ensemble.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith("| base | 2 | 8 (4 melanoma) | 0.500 ± 0.000 |") and row.endswith("| 1.000 |")


def test_recipe_pairs_groups_two_member_ensembles_by_recipe_and_leaves_label_conflicts_out(tmp_path):
    """Two complementary "base" seeds make a perfect pair; a "weak" run that ranks melanomas backwards drags its
    pairs down; the conflicting image (scored 0.0 as a melanoma by every run) would spoil every AUC if counted."""
    truth = [True] * 4 + [False] * 4
    runs = {("base", 1): [0.9, 0.9, 0.1, 0.1, 0.3, 0.3, 0.3, 0.3],
            ("base", 2): [0.1, 0.1, 0.9, 0.9, 0.3, 0.3, 0.3, 0.3],
            ("weak", 1): [0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9]}
    for (name, seed), probs in runs.items():
        out = tmp_path / f"loso-insource-{name}" / f"full-seed{seed}" / "heldout-eval"
        out.mkdir(parents=True)
        rows = ["path,melanoma_probability,label", "/conflict.jpg,0.0,melanoma"] + [
            f"/img{i}.jpg,{p},{'melanoma' if t else 'nevus'}" for i, (p, t) in enumerate(zip(probs, truth))]
        (out / "predictions.csv").write_text("\n".join(rows) + "\n")
        (out / "metrics.json").write_text(json.dumps({"label_conflicts": {"images": ["/conflict.jpg"]}}))
    runs = [str(run) for run in sorted(tmp_path.glob("*/full-seed*"))]
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "recipe_pairs.py"), "--good", "base", *runs],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "base full-seed1   alone 0.500" in lines[0]
    assert lines[-2].startswith("pairs with 2 good member(s):   1  ensemble AUC 1.000 +- 0.000  minus the better "
                                "member +0.500")
    assert lines[-1].startswith("pairs with 1 good member(s):   2  ensemble AUC 0.000 +- 0.000  minus the better "
                                "member -0.500")


def test_loso_by_collection_scores_the_older_archive_alone(tmp_path, ham_dir):
    """Melanomas from the older archive, non-melanomas partly HAM10000 pictures (the pre-session-9 LOSO set): a
    seed that only tells the collections apart scores 0.75 on all images but 0.5 (chance) on the older archive."""
    ham_id = (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1].split(",")[1]
    images = [f"ISIC_000000{i}.jpg" for i in range(4)] + [f"{ham_id}.jpg", f"{ham_id} (1).jpg",
                                                          "ISIC_0000010.jpg", "ISIC_0000011.jpg"]
    truth = [True] * 4 + [False] * 4
    probs = [0.9] * 4 + [0.1, 0.1, 0.9, 0.9]  # HAM10000 pictures low, everything of the older archive high
    for seed in (1, 2):
        run = tmp_path / "loso" / f"base-seed{seed}"
        run.mkdir(parents=True)
        rows = ["image,melanoma_probability,label"] + [
            f"{im},{p},{'melanoma' if t else 'nevus'}" for im, p, t in zip(images, probs, truth)]
        (run / "val_predictions.csv").write_text("\n".join(rows) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "loso_by_collection.py"), str(tmp_path / "loso")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    row = done.stdout.strip().splitlines()[-1]
    assert row == ("| loso/base | 2 | 0.750 ± 0.000 (8) | 0.500 ± 0.000 (6, 4 melanomas) | 0.750 | 0.500 |"), row


def test_score_rules_rank_each_collection_by_each_rule(tmp_path):
    """Older archive: a melanoma whose probability leaked to pigmented benign keratosis ranks below the nevi by
    p(melanoma) but above them by the odds against nevus; HAM10000: a keratosis more unlike a nevus than the
    melanoma is ranks above it by those odds, not by p(melanoma). The training mix ranks both right."""
    rows = ["image,path,melanoma,nevus,pigmented benign keratosis,prediction,label",
            "ISIC_9000001.jpg,/old/a.jpg,0.6,0.3,0.1,melanoma,melanoma",
            "ISIC_9000002.jpg,/old/b.jpg,0.2,0.1,0.7,pigmented benign keratosis,melanoma",
            "ISIC_9000003.jpg,/old/c.jpg,0.3,0.7,0.0,nevus,nevus",
            "ISIC_9000004.jpg,/old/d.jpg,0.25,0.75,0.0,nevus,nevus",
            "ISIC_9000005.jpg,/ham10000/e.jpg,0.6,0.3,0.1,melanoma,melanoma",
            "ISIC_9000006.jpg,/ham10000/f.jpg,0.05,0.01,0.94,pigmented benign keratosis,pigmented benign keratosis",
            "ISIC_9000007.jpg,/ham10000/g.jpg,0.3,0.7,0.0,nevus,nevus",
            "ISIC_9000008.jpg,/old/mel/h.jpg,0.0,1.0,0.0,nevus,melanoma",  # one picture, two labels: left out
            "ISIC_9000008.jpg,/old/nev/h.jpg,0.0,1.0,0.0,nevus,nevus"]
    for seed in (1, 2):
        (tmp_path / f"run{seed}").mkdir()
        (tmp_path / f"run{seed}" / "val_predictions.csv").write_text("\n".join(rows) + "\n")
    # a run validated in-source: its validation labels are its training mix (4 melanoma, 4 nevus, 1 keratosis)
    (tmp_path / "run1" / "model.json").write_text('{"training": {}}')
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "score_rules.py"), str(tmp_path / "run1"),
                           str(tmp_path / "run2")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    means = done.stdout.strip().splitlines()[-2:]
    assert means == [
        "| mean ± sd of 2 | HAM10000 (3, 1 mel) | 1.000 ± 0.000 | 0.500 ± 0.000 | 0.500 ± 0.000 | - |",
        "| mean ± sd of 2 | older archive (4, 2 mel) | 0.500 ± 0.000 | 1.000 ± 0.000 | 1.000 ± 0.000 | - |"]
    # moved to that mix, the rare keratosis stops drawing the melanoma's probability and stays below it
    run1 = [line for line in done.stdout.splitlines() if line.startswith(f"| {tmp_path / 'run1'} |")]
    assert [line.rsplit("|", 2)[1].strip() for line in run1] == ["1.000", "1.000"]


def test_threshold_shift_counts_in_source_alerts_by_true_class(tmp_path):
    """The in-source 90% threshold (10 melanomas at 0.91..1.0: it sits between the ninth and tenth) alerts the one
    keratosis scored above it and none of the nevi, and is carried to the new source read from --new (where a
    picture filed under two labels is left out, as evaluate leaves it out)."""
    header = "image,path,melanoma_probability,label"
    val = [header] + [f"m{i}.jpg,,{0.91 + i / 100:.2f},melanoma" for i in range(10)]
    val += [f"n{i}.jpg,,0.10,nevus" for i in range(8)] + ["k.jpg,,0.95,seborrheic keratosis"]
    (tmp_path / "run" / "heldout-eval").mkdir(parents=True)
    (tmp_path / "run" / "val_predictions.csv").write_text("\n".join(val) + "\n")
    (tmp_path / "run" / "heldout-eval" / "predictions.csv").write_text(
        "\n".join([header, "a.jpg,,0.99,melanoma", "b.jpg,,0.2,melanoma", "c.jpg,,0.96,other",
                   "d.jpg,,0.1,melanoma", "d (1).jpg,,0.1,other"]) + "\n")  # one picture, two labels: left out
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "threshold_shift.py"), "--new", "heldout-eval",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    counts = {line.split()[0]: line.split()[-1] for line in done.stdout.splitlines() if "alerted (" in line}
    assert counts == {"melanoma": "(0.90)", "nevus": "(0.00)", "seborrheic": "(1.00)"}
    assert "new source sens 0.50 spec 0.00" in done.stdout


def test_compare_defaults_pairs_two_models_by_source_and_at_their_own_alerts(tmp_path, ham_dir):
    """Older-archive images (ids not in HAM10000), a 9-class HAM10000 keratosis and the HAM10000 source: each group
    gets both AUCs, the paired difference and each model's own operating point."""
    ham_ids = [line.split(",")[1] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:4]]
    rows = [("ISIC_9000001", "/d/Train/melanoma", "melanoma"), ("ISIC_9000002", "/d/Train/melanoma", "melanoma"),
            ("ISIC_9000003", "/d/Train/nevus", "nevus"), (ham_ids[0], "/d/Train/pigmented", "actinic keratosis"),
            (ham_ids[1], "/d/ham10000/images", "melanoma"), (ham_ids[2], "/d/ham10000/images", "nevus")]
    scores = {"old": [0.9, 0.8, 0.1, 0.95, 0.9, 0.1], "new": [0.9, 0.05, 0.1, 0.05, 0.9, 0.1]}
    for name, probs in scores.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(json.dumps({"thresholds": {"melanoma_alert": 0.5}}))
        lines = ["image,path,melanoma_probability,label"] + [
            f"{i}.jpg,{folder}/{i}.jpg,{p},{label}" for (i, folder, label), p in zip(rows, probs)]
        (tmp_path / name / "val_predictions.csv").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_defaults.py"), str(tmp_path / "old"),
                           str(tmp_path / "new"), "50"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines()}
    assert out["older archive's own (3, 2 melanoma): AUC"][:2] == ["1.000", "0.500"]
    assert out["older archive's own (3): sensitivity / specificity at the alert"][:2] == ["1.00 / 1.00", "0.50 / 1.00"]
    assert out["9-class split's HAM10000 keratoses, carcinomas, others (1): sensitivity / specificity at the alert"][
        :2] == ["- / 0.00", "- / 1.00"]
    assert out["HAM10000 source (2): sensitivity / specificity at the alert"][:2] == ["1.00 / 1.00", "1.00 / 1.00"]
    assert out["alert threshold"][:2] == ["0.500", "0.500"]


def test_detail_robustness_scores_each_collection_at_each_detail_level(tmp_path, shared_train, ham_dir):
    """A random-weight model: the script predicts the older archive's own images and HAM10000's apart (the 9-class
    split's HAM10000 pictures in neither), at each level, and keeps a model's own detail size as the floor."""
    from melanoma.artifacts import build_test_model

    ham_ids = {line.split(",")[1] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:]}
    older = {c: [p for p in sorted((shared_train / c).glob("*.jpg")) if p.stem not in ham_ids][:3]
             for c in ("melanoma", "nevus")}
    ham_picture = next(p for p in sorted((shared_train / "nevus").glob("*.jpg")) if p.stem in ham_ids)
    ham = sorted((ham_dir / "images").glob("*.jpg"))[:4]
    rows = [(p, c) for c, ps in older.items() for p in ps] + [(ham_picture, "nevus")]
    rows += [(p, "melanoma" if i % 2 else "nevus") for i, p in enumerate(ham)]
    model = build_test_model(tmp_path / "m", image_size=48)
    (model / "val_predictions.csv").write_text("image,path,label\n" + "".join(
        f"{p.name},{p},{label}\n" for p, label in rows))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "detail_robustness.py"), str(model),
                           "--levels", "0", "100", "200"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    # run, level, collection, then AUC, alerted, sensitivity, specificity, p(mel) of others, spec@90 refit
    assert [(cells[1], " ".join(cells[2:-6])) for cells in lines] == [
        ("stored", "older archive"), ("stored", "HAM10000"), ("100", "older archive"), ("100", "HAM10000"),
        ("200", "older archive"), ("200", "HAM10000")]
    assert all(0.0 <= float(cells[-6]) <= 1.0 and 0.0 <= float(cells[-1]) <= 1.0 for cells in lines)
    # 200 px is above every image's shorter side (180 / 150): nothing to reduce, the stored figures again
    assert [cells[-6:] for cells in lines[4:]] == [cells[-6:] for cells in lines[:2]]


def test_acquisition_changes_keep_the_size_and_move_the_pixels_as_named(shared_train):
    """scripts/acquisition_robustness.py's changes on a real lesion: each keeps the size; stored is the image;
    blur lowers and sharpening raises the fine contrast; gamma < 1 brightens; saturation scales the distance from
    grey; noise is the same on every call (seeded by the image); JPEG moves pixels a little; ink draws violet marks
    on a ring round the middle (inkblack the same dashes in black). Bad names are refused."""
    import argparse

    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    from acquisition_robustness import apply_change, change_name

    image = Image.open(sorted((shared_train / "melanoma").glob("*.jpg"))[0]).convert("RGB")
    x = lambda change: np.asarray(apply_change(image, change), dtype=np.float64)  # noqa: E731
    fine = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731  (mean neighbour difference)
    chroma = lambda a: np.abs(a - a.mean(axis=2, keepdims=True)).mean()  # noqa: E731
    stored = x("stored")
    assert np.array_equal(stored, np.asarray(image)) and all(x(c).shape == stored.shape for c in ("jpeg50", "blur1"))
    assert fine(x("blur1")) < 0.8 * fine(stored) < fine(stored) < fine(x("sharpen100"))
    assert x("gamma0.8").mean() > stored.mean() > x("gamma1.25").mean()
    assert chroma(x("saturation0.7")) < chroma(stored) < chroma(x("saturation1.3"))
    assert np.array_equal(x("noise6"), x("noise6")) and 3 < np.abs(x("noise6") - stored).mean() < 6
    assert 0 < np.abs(x("jpeg50") - stored).mean() < 5
    for ink in ("ink8", "inkdots12"):  # violet marks on a ring: the middle untouched, the same marks every call
        inked = x(ink)
        marked = np.abs(inked - stored).sum(axis=2) > 30
        h, w = marked.shape
        assert np.array_equal(inked, x(ink)) and 0.01 < marked.mean() < 0.15
        assert not marked[h // 3:-h // 3, w // 3:-w // 3].any()
        assert (stored - inked)[marked][:, 0].mean() > (stored - inked)[marked][:, 2].mean()  # red falls more: violet
    black, dashed = x("inkblack8"), x("ink8")  # the same dashes in black: the same place, darker, no violet cast
    marked = np.abs(dashed - stored).sum(axis=2) > 0
    assert np.array_equal(np.abs(black - stored).sum(axis=2) > 0, marked)
    blue_over_red = lambda a: (a[marked][:, 2] - a[marked][:, 0]).mean()  # noqa: E731  (violet: blue above red)
    assert black[marked].mean() < dashed[marked].mean() and blue_over_red(black) < 5 < 20 < blue_over_red(dashed)
    assert [change_name(c) for c in ("blur0.7", "inkdots12", "inkblack8")] == ["blur0.7", "inkdots12", "inkblack8"]
    for bad in ("blur", "jpeg0", "fog3", "stored1"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown change"):
            change_name(bad)


def test_acquisition_robustness_scores_each_collection_under_each_change(tmp_path, shared_train, ham_dir):
    """A random-weight model: the script predicts the older archive's own images and HAM10000's apart under each
    change, with the views asked for; stored twice gives the same figures twice."""
    from melanoma.artifacts import build_test_model

    ham_ids = {line.split(",")[1] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:]}
    rows = [(p, c) for c in ("melanoma", "nevus")
            for p in [p for p in sorted((shared_train / c).glob("*.jpg")) if p.stem not in ham_ids][:2]]
    ham = sorted((ham_dir / "images").glob("*.jpg"))[:4]
    rows += [(p, "melanoma" if i % 2 else "nevus") for i, p in enumerate(ham)]
    model = build_test_model(tmp_path / "m", image_size=48)
    (model / "val_predictions.csv").write_text("image,path,label\n" + "".join(
        f"{p.name},{p},{label}\n" for p, label in rows))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "acquisition_robustness.py"), str(model),
                           "--changes", "stored", "blur1.5", "stored", "--views", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert [(cells[1], " ".join(cells[2:-8])) for cells in lines] == [
        ("stored", "older archive"), ("stored", "HAM10000"), ("blur1.5", "older archive"), ("blur1.5", "HAM10000"),
        ("stored", "older archive"), ("stored", "HAM10000")]
    assert [cells[-8:] for cells in lines[4:]] == [cells[-8:] for cells in lines[:2]]
    assert [cells[-8:-6] for cells in lines[:2]] == [["4", "2"], ["4", "2"]]  # n, melanomas per collection
    (model / "heldout-eval").mkdir()  # a never-seen source's images: only that collection is scored, without the
    conflict = [p for p in sorted((shared_train / "nevus").glob("*.jpg")) if p.stem not in ham_ids][2]  # conflicts
    (model / "heldout-eval" / "metrics.json").write_text(json.dumps(
        {"label_conflicts": {"scored": False, "images": [str(conflict)]}}))
    (tmp_path / "held").mkdir()  # as scripts/loso_insource.sh lists them: symlinks, judged by where they point
    for p, _ in rows[:4]:
        (tmp_path / "held" / p.name).symlink_to(p)
    (model / "heldout-eval" / "predictions.csv").write_text("image,path,label\n" + "".join(
        f"{p.name},{tmp_path / 'held' / p.name},{label}\n" for p, label in rows[:4]) + f"x.jpg,{conflict},melanoma\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "acquisition_robustness.py"), str(model),
                           "--changes", "stored", "--views", "2", "--predictions", "heldout-eval/predictions.csv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    heldout = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert [(" ".join(cells[2:-8]), cells[-8:]) for cells in heldout] == [("older archive", lines[0][-8:])]
    meta = json.loads((model / "model.json").read_text())  # --adapt needs a validation operating point
    (model / "model.json").write_text(json.dumps({**meta, "metrics": {"melanoma_sensitivity": 0.9,
                                                                      "melanoma_specificity": 0.7}}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "acquisition_robustness.py"), str(model),
                           "--changes", "stored", "--views", "1", "--adapt"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    header, *adapted = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert header[-3:] == ["adapted", "sens", "spec"] and len(adapted) == 2
    assert all(0 <= float(x) <= 1 for cells in adapted for x in cells[-2:])


def test_ensemble_members_scores_each_member_by_source_and_names_a_bad_folder(tmp_path, shared_train, ham_dir):
    """A single random-weight network counts as one member: its AUC is the ensemble's, for the older archive's own
    images and the HAM10000 source, with the share it alerts at its own 90%-sensitivity threshold; a folder without
    validation predictions is a one-line error."""
    from melanoma.artifacts import build_test_model

    ham_ids = {line.split(",")[1] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:]}
    rows = [(p, c) for c in ("melanoma", "nevus")
            for p in [p for p in sorted((shared_train / c).glob("*.jpg")) if p.stem not in ham_ids][:3]]
    ham = sorted((ham_dir / "images").glob("*.jpg"))[:4]
    rows += [(p, "melanoma" if i % 2 else "nevus") for i, p in enumerate(ham)]
    model = build_test_model(tmp_path / "m", image_size=48)
    (model / "val_predictions.csv").write_text("image,path,label\n" + "".join(
        f"{p.name},{p},{label}\n" for p, label in rows))
    script = str(ROOT / "scripts" / "ensemble_members.py")
    done = subprocess.run([sys.executable, script, str(model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cells = {line.split(" | ")[2]: line.split(" | ")[3:] for line in done.stdout.splitlines()[2:]}
    assert set(cells) == {"all (10, 5 melanoma)", "9-class split (the alert's Train source) (6, 3 melanoma)",
                          "older archive's own (6, 3 melanoma)", "HAM10000 source (4, 2 melanoma)"}
    assert all(member == spread == ensemble for member, spread, ensemble, _ in cells.values())
    alerted = {group: int(c[3].rstrip(" |%")) for group, c in cells.items()}  # at the 90%-sensitivity threshold
    assert 50 <= alerted["all (10, 5 melanoma)"] <= 100  # all 5 melanomas (ceil(0.9 x 5)) and maybe others
    changed = subprocess.run([sys.executable, script, str(model), "--changes", "stored", "noise6"],
                             capture_output=True, text=True, timeout=120)
    rows = [line.split(" | ") for line in changed.stdout.splitlines()[2:]]
    assert [r[1] for r in rows] == ["stored"] * 4 + ["noise6"] * 4  # the stored rows as without --changes
    assert {r[2]: r[3:] for r in rows if r[1] == "stored"} == cells
    bad = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: {tmp_path}: no val_predictions.csv (a model " \
        "folder of melanoma ensemble / threshold)"


def test_split_half_threshold_keeps_sensitivity_on_the_held_out_half():
    """The detail-aware threshold check: a threshold fitted for 90% sensitivity on one stratified half, scored on
    the other: with cleanly separated scores it alerts no non-melanoma and about 90% of the held-out melanomas
    (the threshold sits inside the melanomas' scores); on random scores sensitivity stays near 0.9."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from detail_threshold_check import split_half

    y = np.array([True] * 40 + [False] * 60)
    sens, spec = split_half(y, np.where(y, 0.8, 0.2) + np.linspace(0, 0.01, 100), splits=20)
    assert spec.min() == 1.0 and 0.8 <= sens.mean() <= 1.0
    sens, spec = split_half(y, np.random.default_rng(1).random(100), splits=50)
    assert 0.75 < sens.mean() < 0.98 and 0.0 <= spec.min() <= spec.max() <= 1.0


def test_aspect_robustness_field_blackens_outside_the_dermoscope_circle_and_keeps_the_size():
    """scripts/aspect_robustness.py's fieldD geometry: on a white 200x150 image, field1.0 keeps the centre and the
    middle of the long sides white and blackens the corners and the middle of the short sides; field1.2 keeps
    more than field1.0, and the image keeps its size (its level of detail). A malformed name is refused."""
    import argparse

    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    from aspect_robustness import geometry_name, reshape

    white = Image.new("RGB", (200, 150), (255, 255, 255))
    inside = np.asarray(reshape(white, "field1.0"))[..., 0] > 0
    assert inside.shape == (150, 200)
    assert inside[75, 100] and inside[0, 100] and inside[149, 100]  # centre, middle of the top and bottom
    assert not inside[0, 0] and not inside[149, 199] and not inside[75, 0] and not inside[75, 199]
    assert inside.sum() < np.asarray(reshape(white, "field1.2"))[..., 0].astype(bool).sum() < inside.size
    assert geometry_name("field0.85") == "field0.85" and geometry_name("natural") == "natural"
    for bad in ("fieldx", "field0", "round"):
        with pytest.raises(argparse.ArgumentTypeError, match="unknown geometry"):
            geometry_name(bad)


def test_aspect_robustness_counts_dark_corners_of_a_round_field_in_a_folder(tmp_path):
    """--dark-corners: a made round-field image (black outside a 1.0 circle) has 4 dark corners, a plain bright
    image none; a folder of one each (plus a non-image file, ignored) is half round-field images."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    from aspect_robustness import dark_corner_share, dark_corners, reshape

    skin = Image.new("RGB", (200, 150), (200, 150, 120))
    round_field = reshape(skin, "field1.0")
    assert dark_corners(round_field) == 4 and dark_corners(skin) == 0
    (tmp_path / "a").mkdir()
    round_field.save(tmp_path / "a" / "round.png")
    skin.save(tmp_path / "plain.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert dark_corner_share(tmp_path, sample=10) == (2, 0.5)


def test_adabn_check_sets_each_layer_to_the_new_images_statistics_after_the_layers_before_it():
    """scripts/adapt_check.py's AdaBN: at strength 1 every BatchNorm layer gets the mean and variance of its input
    on the new images, measured with the layers before it already adapted; the original model is left as it was;
    stem_only adapts the first layer alone; strength 0.5 blends."""
    import torch
    from torch import nn

    sys.path.insert(0, str(ROOT / "scripts"))
    from adapt_check import adapt

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2))
    net.eval()
    x = torch.randn(16, 3, 12, 12) * 3 + 5
    adapted = adapt(net, x, 1.0)
    assert torch.equal(net[1].running_mean, torch.zeros(4))  # a copy was adapted
    with torch.no_grad():
        first = adapted[0](x)
        assert torch.allclose(adapted[1].running_mean, first.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(adapted[1].running_var, first.var(dim=(0, 2, 3)), rtol=1e-4)
        second = adapted[3](adapted[2](adapted[1](first)))
        assert torch.allclose(adapted[4].running_mean, second.mean(dim=(0, 2, 3)), atol=1e-5)
        assert adapted(x).mean(dim=(0, 2, 3)).abs().max() < 1e-4
    stem = adapt(net, x, 1.0, stem_only=True)
    assert torch.equal(stem[1].running_mean, adapted[1].running_mean)
    assert torch.equal(stem[4].running_mean, torch.zeros(2))
    half = adapt(net, x, 0.5)
    assert torch.allclose(half[1].running_var, 0.5 + 0.5 * adapted[1].running_var, rtol=1e-5)


def test_adabn_check_draws_training_images_class_balanced_or_natural_never_validation(tiny_isic, tmp_path):
    """scripts/adapt_check.py --statistics re-estimates the statistics on the model's own training images: drawn
    class-balanced (as the training sampler draws) or in the natural mix, never one of its validation images."""
    import csv

    sys.path.insert(0, str(ROOT / "scripts"))
    from adapt_check import training_sample

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text(json.dumps({"training": {"data": str(tiny_isic)}}))
    validation = sorted((tiny_isic / "melanoma").glob("*.jpg"))[:2]
    with (run / "val_predictions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "path", "melanoma", "prediction", "label"])
        writer.writerows([[p.name, str(p), "0.5", "melanoma", "melanoma"] for p in validation])
    balanced = training_sample(run, 18, balanced=True)
    assert len(balanced) == 18 and not set(balanced) & set(validation)
    per_class = {c.name: sum(p.parent == c for p in balanced) for c in tiny_isic.iterdir()}
    assert set(per_class.values()) == {2}
    natural = training_sample(run, 43, balanced=False)  # 45 images, 2 validate: all 43 others, each once
    assert len(set(natural)) == 43 and not set(natural) & set(validation)


def test_wise_ft_blends_the_backbone_towards_the_pretrained_weights_and_keeps_the_head():
    """scripts/wise_ft.py: alpha x fine-tuned + (1 - alpha) x pretrained for the backbone's float tensors (weights
    and batch-norm statistics); the classifier head and integer buffers stay as trained; alpha 1 is the run."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from wise_ft import interpolated

    fine = {"conv.weight": torch.full((2,), 4.0), "bn.running_var": torch.full((2,), 2.0),
            "bn.num_batches_tracked": torch.tensor(7), "classifier.weight": torch.full((2,), 9.0),
            "classifier_extra.weight": torch.full((2,), 3.0)}
    pre = {"conv.weight": torch.zeros(2), "bn.running_var": torch.ones(2), "bn.num_batches_tracked": torch.tensor(0),
           "classifier.weight": torch.zeros(2), "classifier_extra.weight": torch.zeros(2)}
    blended = interpolated(fine, pre, "classifier", 0.75)
    assert blended["conv.weight"].tolist() == [3.0, 3.0] and blended["bn.running_var"].tolist() == [1.75, 1.75]
    assert int(blended["bn.num_batches_tracked"]) == 7 and blended["classifier.weight"].tolist() == [9.0, 9.0]
    assert blended["classifier_extra.weight"].tolist() == [2.25, 2.25]  # a name that only starts like the head
    assert all(torch.equal(interpolated(fine, pre, "classifier", 1.0)[k], v) for k, v in fine.items())


def test_lesion_share_measures_the_dark_share_of_the_centre_crop_and_ranks_melanomas_by_it(tmp_path):
    """scripts/lesion_share.py: a dark disc filling about 30% of the eval crop measures about 0.3 (Otsu splits the
    two grey levels); a folder where melanomas are the larger discs gives the share alone a melanoma AUC of 1 (also
    against nevi), and an unreadable file is reported and skipped."""
    from PIL import Image, ImageDraw

    def lesion(radius):
        image = Image.new("RGB", (200, 150), (220, 170, 150))
        ImageDraw.Draw(image).ellipse((100 - radius, 75 - radius, 100 + radius, 75 + radius), fill=(90, 50, 30))
        return image

    for label, radii in (("melanoma", (40, 45, 50)), ("nevus", (15, 20, 25)), ("dermatofibroma", (30,))):
        (tmp_path / label).mkdir()
        for radius in radii:
            lesion(radius).save(tmp_path / label / f"r{radius}.png")
    (tmp_path / "nevus" / "broken.jpg").write_bytes(b"not a jpeg")
    sys.path.insert(0, str(ROOT / "scripts"))
    from lesion_share import lesion_share

    crop = round(150 * 0.875)
    assert lesion_share(tmp_path / "melanoma" / "r40.png") == pytest.approx(np.pi * 40**2 / crop**2, abs=0.02)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "lesion_share.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert "7 images; melanoma AUC of the lesion share alone 1.000 (against nevi only: 1.000)" in done.stdout
    assert "broken.jpg" in done.stderr and "Traceback" not in done.stderr


def _proxy_run(root: Path, seed: int, auc: float, in_source_auc: float = 0.9, cpu: str | None = None) -> None:
    """A scored run of scripts/loso_insource.sh: result.json (with the machine record of runs since session 35
    where `cpu` is given) and heldout-eval/metrics.json's melanoma block."""
    run = root / f"full-seed{seed}"
    (run / "heldout-eval").mkdir(parents=True)
    machine = {"machine": {"cpu": cpu, "threads": 2, "torch": "2.9", "gpu": None}, "precision": "bf16-mixed"}
    (run / "result.json").write_text(json.dumps({"melanoma_auc": in_source_auc, "balanced_accuracy": 0.64,
                                                 "best_epoch": 10, "epochs_run": 10, **(machine if cpu else {})}))
    (run / "heldout-eval" / "metrics.json").write_text(json.dumps({"melanoma": {
        "auc": {"value": auc, "ci": [auc - 0.03, auc + 0.03]}, "sensitivity": {"value": 0.84},
        "specificity": {"value": 0.62}, "expected_alert_share": {"referral clinic (10% melanoma)": 0.426}}}))


def test_insource_table_pairs_each_seed_with_the_baselines_and_names_a_missing_folder(tmp_path):
    """The recipe's seeds 1-2 pair with the baseline's seeds 1-2 (its seed 3 has no partner); the baseline's own
    row has no paired cell; the ensemble's AUC joins the recipe's row; a folder without runs is one stderr line."""
    base, lever = tmp_path / "loso-insource-base", tmp_path / "loso-insource-lever"
    for seed, auc in ((1, 0.825), (2, 0.838), (3, 0.842)):
        _proxy_run(base, seed, auc)
    for seed, auc in ((1, 0.805), (2, 0.828)):
        _proxy_run(lever, seed, auc, in_source_auc=0.8)
    (lever / "ensemble-1-2" / "heldout-eval").mkdir(parents=True)
    (lever / "ensemble-1-2" / "heldout-eval" / "metrics.json").write_text(json.dumps({"melanoma": {
        "auc": {"value": 0.83, "ci": [0.8, 0.86]}}}))
    script = str(ROOT / "scripts" / "insource_table.py")
    done = subprocess.run([sys.executable, script, "--baseline", str(base), str(lever)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    base_row, lever_row = done.stdout.strip().splitlines()[-2:]
    assert base_row.startswith("| base, seeds 1, 2, 3 | 0.835 ± 0.009 (0.825 [0.795, 0.855] / ") and "|  |" in base_row
    assert lever_row.startswith("| lever, seeds 1, 2 | 0.817 ± 0.016 (0.805 [0.775, 0.835] / 0.828 [0.798, 0.858]); "
                                "ensemble of seeds 1-2 0.830 | -0.015 ± 0.007 (-0.020 / -0.010; seeds 1, 2) | "
                                "0.84 / 0.62, 0.84 / 0.62; 43%, 43% | 0.800 (0.800 / 0.800) / 0.64; "
                                "epochs 10, 10 of 10 |")
    missing = subprocess.run([sys.executable, script, "--baseline", str(base), str(tmp_path / "nothing")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == f"insource_table: {tmp_path / 'nothing'}: no full-seed<N> run with " \
                                     "heldout-eval/metrics.json"


def test_insource_table_names_the_machines_and_warns_of_a_pair_across_two(tmp_path):
    """Runs record their machine (result.json, session 35): the table names the machines under it and warns of each
    seed whose run and baseline pair trained on different CPUs; runs without a record are counted, not guessed."""
    base, lever = tmp_path / "loso-insource-base", tmp_path / "loso-insource-lever"
    _proxy_run(base, 1, 0.82, cpu="AMD EPYC")
    _proxy_run(base, 2, 0.83)
    _proxy_run(lever, 1, 0.80, cpu="Intel Xeon")
    _proxy_run(lever, 2, 0.81, cpu="AMD EPYC")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "insource_table.py"), "--baseline", str(base),
                           str(lever)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    notes = done.stderr.strip().splitlines()
    assert notes[0] == ("trained on: AMD EPYC, 2 threads, torch 2.9, bf16-mixed; "
                        "Intel Xeon, 2 threads, torch 2.9, bf16-mixed")
    assert notes[1].startswith("1 of 4 runs carry no machine record")
    assert notes[2:] == [f"warning: {lever / 'full-seed1'} trained on Intel Xeon, 2 threads, torch 2.9, bf16-mixed, "
                         "the baseline's seed 1 on AMD EPYC, 2 threads, torch 2.9, bf16-mixed: their difference is "
                         "not a paired comparison"]


def test_seed_stats_formats_one_many_and_no_values_as_every_table_prints_them():
    """The one 'mean ± sd' formatter of the experiment tables (scripts/seed_stats.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from seed_stats import mean_sd

    assert mean_sd([0.825, 0.838, 0.842]) == "0.835 ± 0.009"
    assert mean_sd([-0.02, -0.01], signed=True) == "-0.015 ± 0.007"
    assert mean_sd([0.004], signed=True) == "+0.004"
    assert mean_sd([0.8], one_note=" (1 seed)") == "0.800 (1 seed)"
    assert mean_sd([]) == "-"


def _scored_seed(root: Path, seed: int, probabilities: dict[str, tuple[float, str]], conflicts: list[str]) -> None:
    """A run's heldout-eval of scripts/loso_insource.sh: predictions.csv and the label conflicts metrics.json lists."""
    folder = root / f"full-seed{seed}" / "heldout-eval"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"label_conflicts": {"scored": False, "images": conflicts}}))
    with (folder / "predictions.csv").open("w", newline="") as fh:
        fh.write("path,melanoma_probability,label\n")
        fh.writelines(f"{path},{p},{label}\n" for path, (p, label) in probabilities.items())


def test_ensemble_size_scores_every_subset_of_seeds_without_the_label_conflicts(tmp_path):
    """Two seeds at AUC 0.75 each rank perfectly together; a label-conflict image (listed in metrics.json) is left
    out as `melanoma evaluate` left it out; a folder without scored seeds is one stderr line."""
    conflict = {"e.jpg": (0.0, "melanoma")}
    _scored_seed(tmp_path, 1, {"a.jpg": (0.9, "melanoma"), "b.jpg": (0.2, "melanoma"), "c.jpg": (0.3, "nevus"),
                               "d.jpg": (0.1, "nevus"), **conflict}, ["e.jpg"])
    _scored_seed(tmp_path, 2, {"a.jpg": (0.4, "melanoma"), "b.jpg": (0.8, "melanoma"), "c.jpg": (0.5, "nevus"),
                               "d.jpg": (0.2, "nevus"), **conflict}, ["e.jpg"])
    script = str(ROOT / "scripts" / "ensemble_size.py")
    done = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"{tmp_path}: seeds 1, 2; 4 images scored"
    assert lines[-2:] == ["| 1 | 2 | 0.750 ± 0.000 [0.750, 0.750] | 0.500 ± 0.000 [0.50, 0.50] |",
                          "| 2 | 1 | 1.000 [1.000, 1.000] | 1.000 [1.00, 1.00] |"]
    empty = subprocess.run([sys.executable, script, str(tmp_path / "none")], capture_output=True, text=True,
                           timeout=60)
    assert empty.returncode == 1 and empty.stderr.strip().endswith("no full-seed<N>/heldout-eval/predictions.csv")


def test_tta_loso_insource_pairs_one_view_with_tta_per_seed_and_per_ensemble(tmp_path):
    """scripts/tta_loso.py --insource: each seed's one-view and TTA probabilities (cached beside the run, as the
    predictor writes them) are scored on the images its heldout-eval scored, label conflicts left out; rows for one
    seed and for the 2-seed ensemble, the paired difference signed."""
    conflict = {"e.jpg": (0.0, "melanoma")}
    truth = {"a.jpg": "melanoma", "b.jpg": "melanoma", "c.jpg": "nevus", "d.jpg": "nevus"}
    plain = {1: (0.9, 0.2, 0.3, 0.1), 2: (0.4, 0.8, 0.5, 0.2)}  # AUC 0.75 each, 1.0 together
    tta = {1: (0.9, 0.6, 0.3, 0.1), 2: (0.7, 0.8, 0.5, 0.2)}  # AUC 1.0 each
    for seed in (1, 2):
        scored = {x: (p, truth[x]) for x, p in zip(truth, plain[seed])}
        _scored_seed(tmp_path, seed, {**scored, **conflict}, ["e.jpg"])
        for views, probs in ((1, plain[seed]), (8, tta[seed])):
            rows = "".join(f"{x},{p}\n" for x, p in zip(truth, probs))
            cache = tmp_path / f"full-seed{seed}" / f"tta{views}_predictions.csv"
            cache.write_text(f"path,melanoma_probability\n{rows}")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tta_loso.py"), "--insource", str(tmp_path),
                           "--members", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"{tmp_path}: seeds 1, 2; 4 images, 2 melanomas"
    assert lines[-4:] == [
        "| 1 | 2 | 0.750 ± 0.000 | 1.000 ± 0.000 | +0.250 ± 0.000 | 0.500 ± 0.000 | 1.000 ± 0.000 |",
        "| 2 | 1 | 1.000 | 1.000 | +0.000 | 1.000 | 1.000 |", "",
        "ensemble of all 2 seeds, TTA - plain: +0.000 [+0.000, +0.000] (paired bootstrap over the images, 95%)"]
    # --alert: the threshold keeping 90% of the run's own (HAM10000: `mel`) validation melanomas, plain 0.55 and
    # TTA 0.5, applied to the never-seen images: plain alerts a.jpg alone, TTA a.jpg and b.jpg
    run = tmp_path / "full-seed1"
    (run / "val_predictions.csv").write_text("path,label\nh1,mel\nh2,mel\nh3,nv\nh4,nv\n")
    for views, probs in ((1, (0.8, 0.6, 0.5, 0.1)), (8, (0.8, 0.7, 0.3, 0.2))):
        rows = "".join(f"h{i},{p}\n" for i, p in enumerate(probs, 1))
        (run / f"insource-tta{views}_predictions.csv").write_text(f"path,melanoma_probability\n{rows}")
    alert = subprocess.run([sys.executable, str(ROOT / "scripts" / "tta_loso.py"), "--insource", str(tmp_path),
                            "--alert", "1"], capture_output=True, text=True, timeout=60)
    assert alert.returncode == 0, alert.stderr
    # TTA at the plain threshold 0.55: a.jpg (0.9) and b.jpg (0.6) too
    assert alert.stdout.strip().splitlines()[-1] == "| seed 1 | 0.50 / 1.00; 5% | 1.00 / 1.00; 10% | 1.00 / 1.00; 10% |"


def test_tta_scales_pairs_each_resize_and_their_mean_with_the_shipped_one(tmp_path):
    """scripts/tta_scales.py: each seed's probabilities at every eval resize (cached beside the run, as the predictor
    writes them) are scored on the never-seen images its heldout-eval scored, label conflicts left out, and on its
    own validation images; rows per resize and for the mean of the resizes, paired against the shipped resize."""
    truth = {"a.jpg": "melanoma", "b.jpg": "melanoma", "c.jpg": "nevus", "d.jpg": "nevus"}
    at = {183: (0.9, 0.2, 0.3, 0.1), 160: (0.9, 0.6, 0.3, 0.1)}  # AUC 0.75 at the shipped resize, 1.0 at 160
    for seed in (1, 2):
        _scored_seed(tmp_path, seed, {**{x: (p, truth[x]) for x, p in zip(truth, at[183])},
                                      "e.jpg": (0.0, "melanoma")}, ["e.jpg"])
        run = tmp_path / f"full-seed{seed}"
        (run / "val_predictions.csv").write_text("path,label\nh1,mel\nh2,nv\n")
        for resize, probs in at.items():
            rows = "".join(f"{x},{p}\n" for x, p in zip(truth, probs))
            (run / f"scale{resize}-1_predictions.csv").write_text(f"path,melanoma_probability\n{rows}")
            (run / f"insource-scale{resize}-1_predictions.csv").write_text("path,melanoma_probability\nh1,0.7\nh2,0.2\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "tta_scales.py"), str(tmp_path), "--resizes", "160",
                           "183"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"{tmp_path}: seeds 1, 2; 4 never-seen images, 2 melanomas; in-source 2"
    assert lines[3].startswith("| 160 | 1.000 ± 0.000 | +0.250 ± 0.000 | 1.000 | +0.250 [")
    assert lines[4] == "| 183 | 0.750 ± 0.000 | +0.000 ± 0.000 | 0.750 |  | 1.000 ± 0.000 |"
    assert lines[5].startswith("| mean | 1.000 ± 0.000 | +0.250 ± 0.000 | 1.000 |")
    assert lines[5].endswith("| 1.000 ± 0.000 |")


def test_illuminant_skin_leaves_out_the_lesion_and_glare_and_measures_the_cast(tmp_path):
    """scripts/illuminant_skin.py: on skin of one colour with a dark lesion, the whole view's Shades-of-Gray
    illuminant is the skin's (p = 6 weighs the dark disc little) and the cast is the skin colour's angle to grey;
    a saturated glare spot pulls the whole view's estimate towards white, not the skin's. An unreadable file is
    reported and skipped."""
    from PIL import Image, ImageDraw

    skin = np.array([220.0, 170.0, 150.0])
    cast = float(np.degrees(np.arccos(skin.sum() / np.sqrt(3) / np.linalg.norm(skin))))
    for name, glare in (("plain", False), ("glare", True)):
        image = Image.new("RGB", (200, 150), tuple(int(v) for v in skin))
        ImageDraw.Draw(image).ellipse((60, 35, 140, 115), fill=(90, 50, 30))
        if glare:
            ImageDraw.Draw(image).rectangle((10, 10, 50, 40), fill=(255, 255, 255))
        (tmp_path / "nevus").mkdir(exist_ok=True)
        image.save(tmp_path / "nevus" / f"{name}.png")
    (tmp_path / "nevus" / "broken.jpg").write_bytes(b"not a jpeg")
    sys.path.insert(0, str(ROOT / "scripts"))
    from illuminant_skin import skin_angle

    plain_angle, plain_cast = skin_angle(tmp_path / "nevus" / "plain.png")
    assert plain_angle < 0.3 and plain_cast == pytest.approx(cast, abs=0.3)
    assert skin_angle(tmp_path / "nevus" / "glare.png")[0] > 1.0
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "illuminant_skin.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert "2 images (0 with under 5% skin left out)" in done.stdout
    assert "broken.jpg" in done.stderr and "Traceback" not in done.stderr


def test_loso_table_prints_mean_sd_per_recipe_and_marks_a_single_seed(tmp_path):
    """scripts/loso_table.py: one row per recipe of runs/loso-style folders, mean ± sd over its seeds; a recipe with
    one seed is marked '(1 seed)', a figure no run has is '-'."""
    for name, auc in (("base-seed1", 0.80), ("base-seed2", 0.82), ("ema-seed1", 0.75)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps({
            "melanoma_auc": auc, "balanced_accuracy": 0.5, "melanoma_sensitivity": 0.9}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "loso_table.py"), str(tmp_path)],
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip().splitlines()[2:] == [
        "| base | 2 | 0.810 ± 0.014 | 0.500 ± 0.000 | 0.900 ± 0.000 | - |",
        "| ema | 1 | 0.750 (1 seed) | 0.500 (1 seed) | 0.900 (1 seed) | - |"]


def test_compare_auc_leaves_out_the_label_conflicts_evaluate_left_out(tmp_path):
    """A picture filed as melanoma and as nevus is listed twice in predictions.csv; metrics.json leaves it out of
    every figure, and so must the paired comparison (counted, it would pull both AUCs below 1)."""
    for name, probs in (("a", [0.9, 0.8, 0.2, 0.1]), ("b", [0.6, 0.7, 0.3, 0.4])):
        out = tmp_path / name
        out.mkdir()
        rows = ["path,melanoma_probability,label", "/mel/dup.jpg,0.0,melanoma", "/nev/dup.jpg,0.0,nevus"] + [
            f"/img{i}.jpg,{p},{'melanoma' if i < 2 else 'nevus'}" for i, p in enumerate(probs)]
        (out / "predictions.csv").write_text("\n".join(rows) + "\n")
        (out / "metrics.json").write_text(json.dumps({"label_conflicts": {"images": ["/mel/dup.jpg",
                                                                                     "/nev/dup.jpg"]}}))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_auc.py"), str(tmp_path / "a" /
                           "predictions.csv"), str(tmp_path / "b" / "predictions.csv")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 images (2 melanoma): AUC 1.000 vs 1.000, difference +0.000")


def test_compare_auc_pairs_a_run_scored_through_symlinks_with_one_scored_on_the_files(tmp_path):
    """scripts/loso_insource.sh with HELDOUT_CSV scores a folder of symlinks: its rows pair with another run's rows
    naming the files themselves (by where the paths resolve), not zero images in common."""
    (tmp_path / "img").mkdir()
    (tmp_path / "links").mkdir()
    files = [tmp_path / "img" / f"{i}.jpg" for i in range(4)]
    for f in files:
        f.write_bytes(b"")
        (tmp_path / "links" / f.name).symlink_to(f)
    for name, folder, probs in (("a", "links", [0.9, 0.8, 0.2, 0.1]), ("b", "img", [0.6, 0.1, 0.3, 0.4])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "predictions.csv").write_text("path,melanoma_probability,label\n" + "".join(
            f"{tmp_path / folder / f.name},{p},{'melanoma' if i < 2 else 'nevus'}\n"
            for i, (f, p) in enumerate(zip(files, probs))))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_auc.py"), str(tmp_path / "a" /
                           "predictions.csv"), str(tmp_path / "b" / "predictions.csv")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 images (2 melanoma): AUC 1.000 vs 0.500, difference +0.500")


def test_older_archive_at_detail_writes_and_scores_the_older_archives_validation_images(tiny_isic, tmp_path):
    """Only the 9-class split's own images (not HAM10000's, whatever folder) are written at each side and scored
    with the model's alert; a second run reads the scores instead of predicting again."""
    from PIL import Image

    from melanoma.artifacts import build_test_model

    model = build_test_model(tmp_path / "model", image_size=64)
    own = sorted(tiny_isic.glob("melanoma/*.jpg")) + sorted(tiny_isic.glob("nevus/*.jpg"))
    rows = ["image,path,melanoma_probability,label"] + [f"{p.name},{p},0.5,{p.parent.name}" for p in own]
    rows.append("ISIC_0024306.jpg,/x/ham10000/images/ISIC_0024306.jpg,0.5,nevus")  # the HAM10000 source
    (model / "val_predictions.csv").write_text("\n".join(rows) + "\n")
    script = [sys.executable, str(ROOT / "scripts" / "older_archive_at_detail.py"), str(model), str(tmp_path / "out"),
              "--sides", "100"]
    done = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(own)} older-archive validation images" in done.stdout
    written = sorted((tmp_path / "out" / "100").glob("*/*.png"))
    assert len(written) == len(own) and all(min(Image.open(p).size) == 100 for p in written)
    metrics = json.loads((tmp_path / "out" / "100-eval" / "metrics.json").read_text())
    assert metrics["n_images"] == len(own) and metrics["melanoma"]["n_melanoma"] == 5
    row = done.stdout.strip().splitlines()[-1]
    assert row.startswith("| 100 px | ")
    again = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == row


def test_loso_insource_gives_each_seed_its_own_split_and_scores_fold_ensembles(tiny_isic, ham_dir, tmp_path):
    """scripts/loso_insource.sh on tiny copies, two CPU steps a model: SPLIT_SEED=seed validates each seed on its
    own split; FOLDS=2 trains each seed as a 2-fold CV whose fold ensemble is the model scored on the held-out
    source (the 9-class images); the seeds' ensemble (4 fold models) is scored too; a re-run trains nothing."""
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 20, dx=("mel", "nv"))
    env = {**os.environ, "HELDOUT_CSV": "none", "DATA": str(tiny_isic), "HAM": str(ham), "ROOT": str(tmp_path / "p"),
           "SPLIT_SEED": "seed", "FOLDS": "2", "EPOCHS": "1", "DRAWS": "32", "PYTHON": sys.executable,
           "HARDWARE": "--max-train-batches 2 --num-workers 0 --precision 32-true",
           "MELANOMA": str(Path(sys.executable).parent / "melanoma")}
    script = [str(ROOT / "scripts" / "loso_insource.sh"), "1", "2"]
    done = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "p").glob("*.log")))
    assert done.returncode == 0, logs + done.stderr
    for seed in (1, 2):
        run = tmp_path / "p" / f"full-seed{seed}"
        assert f"split_seed: {seed}\n" in (run / "config.yaml").read_text()
        assert sorted(p.name for p in run.glob("fold-*")) == ["fold-0", "fold-1"]
        scored = json.loads((run / "heldout-eval" / "metrics.json").read_text())
        assert scored["model"]["architecture"] == "ensemble(efficientnet_lite0,efficientnet_lite0)"
    ensemble = json.loads((tmp_path / "p" / "ensemble-1-2" / "model.json").read_text())
    assert ensemble["architecture"].count("efficientnet_lite0") == 4
    assert (tmp_path / "p" / "ensemble-1-2" / "heldout-eval" / "metrics.json").is_file()
    trained = [(tmp_path / "p" / f"full-seed{seed}.log").stat().st_mtime_ns for seed in (1, 2)]
    again = subprocess.run(["bash", *script], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("held-out source melanoma AUC") == 3
    assert [(tmp_path / "p" / f"full-seed{seed}.log").stat().st_mtime_ns for seed in (1, 2)] == trained


def test_noise_level_groups_by_label_and_reports_a_bad_image(tiny_isic, tmp_path, capsys):
    """The script groups a class-folder dataset by label and reports an unreadable file by name and skips it (the
    estimator itself: tests/test_images.py)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from noise_level import main

    data = tmp_path / "data"
    for label in ("melanoma", "nevus"):
        (data / label).mkdir(parents=True)
        for image in sorted((tiny_isic / label).glob("*.jpg"))[:3]:
            (data / label / image.name).write_bytes(image.read_bytes())
    (data / "nevus" / "broken.jpg").write_bytes(b"not a jpeg")
    assert main([str(data), "--sample", "50"]) == 0
    out, err = capsys.readouterr()
    rows = {line.split()[1]: line.split() for line in out.splitlines()[2:]}
    assert rows["melanoma"][2] == "3" and rows["nevus"][2] == "3" and rows["(all)"][2] == "6"
    assert "broken.jpg" in err and err.count("\n") == 1
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def _loso_run(folder: Path, other_alerted: int, conflict: bool = True) -> Path:
    """A leave-one-source-out run folder: model.json with a validation operating point (0.9 / 0.7), the never-seen
    source's predictions (60 melanomas, all alerted; 100 others, `other_alerted` of them alerted) and its metrics.json
    listing one label-conflict image (an alerted 'nevus' that the scores leave out)."""
    (folder / "heldout-eval").mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"metrics": {"melanoma_sensitivity": 0.9,
                                                               "melanoma_specificity": 0.7}}))
    rows = [("melanoma", True)] * 60 + [("nevus", i < other_alerted) for i in range(100)]
    rows += [("nevus", True)] if conflict else []
    lines = ["path,label,melanoma_alert,refer,melanoma_probability"] + [
        f"/x/{i}.jpg,{label},{str(alert).lower()},false,{0.9 if label == 'melanoma' else (i - 60) / 100:.2f}"
        for i, (label, alert) in enumerate(rows)]
    (folder / "heldout-eval" / "predictions.csv").write_text("\n".join(lines) + "\n")
    conflicts = {"scored": False, "images": [f"/x/{len(rows) - 1}.jpg"]} if conflict else {}
    (folder / "heldout-eval" / "metrics.json").write_text(json.dumps({"label_conflicts": conflicts}))
    return folder


def test_site_check_proxy_flags_a_failing_alert_and_passes_a_working_one(tmp_path, capsys):
    """A run whose alert fires on 75% of the never-seen source's non-melanomas (specificity 0.25) is flagged at
    every drawn 10%-melanoma clinic; one at specificity 0.7 never; the label conflict is left out."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from site_check_proxy import main

    failing, working = _loso_run(tmp_path / "failing", 75), _loso_run(tmp_path / "working", 30)
    assert main([str(failing), str(working), "--draws", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]
    assert "| 1.00 / 0.25 | 111, 77% | 30%-48% | 5 of 5 |" in lines[0]
    assert "| 1.00 / 0.70 | 111, 37% | 30%-48% | 0 of 5 |" in lines[1]
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main([str(working), "--prevalence", "1"]) == 2
    # --adapt: the threshold alerting 0.9 * 0.1 + 0.3 * 0.9 = 36% of each clinic (others' probabilities 0-0.99,
    # melanomas 0.9) keeps every melanoma and about 70% of the others below it
    assert main([str(working), "--draws", "3", "--adapt", "0.1"]) == 0
    cell = capsys.readouterr().out.splitlines()[2].split("|")[-2]
    sens, spec, low = (float(x) for x in re.findall(r"[\d.]+", cell))
    assert sens == low == 1.0 and 0.65 < spec < 0.75


def test_loso_insource_other_direction_trains_on_the_older_archives_own_images(shared_train, ham_dir, tmp_path):
    """TRAIN_SOURCE=older: the run trains on the 9-class images HAM10000 does not hold (a HAM10000 picture filed in
    the 9-class split is linked into neither class folder), as melanoma / nevus, and scores HAM10000; a half-linked
    folder a killed run left behind is started again."""
    ham = make_mini_ham(ham_dir, tmp_path / "ham", 10, dx=("mel", "nv"))
    (tmp_path / "p" / "train-older-own.tmp" / "melanoma").mkdir(parents=True)  # left by a run killed while linking
    (tmp_path / "p" / "train-older-own.tmp" / "melanoma" / "ISIC_0000139.jpg").symlink_to(ham / "images")
    data = tmp_path / "nineclass"
    for label in ("melanoma", "nevus"):  # the first 10 of each: older-archive images HAM10000 does not hold
        (data / label).mkdir(parents=True)
        for image in sorted((shared_train / label).glob("*.jpg"))[:10]:
            shutil.copy2(image, data / label / image.name)
    shared_row = (ham / "HAM10000_metadata.csv").read_text().splitlines()[1].split(",")
    shutil.copy2(ham / "images" / f"{shared_row[1]}.jpg", data / "nevus" / f"{shared_row[1]}.jpg")
    env = {**os.environ, "HELDOUT_CSV": "none", "TRAIN_SOURCE": "older", "DATA": str(data), "HAM": str(ham),
           "ROOT": str(tmp_path / "p"), "EPOCHS": "1", "DRAWS": "32", "PYTHON": sys.executable,
           "HARDWARE": "--max-train-batches 2 --num-workers 0 --precision 32-true",
           "MELANOMA": str(Path(sys.executable).parent / "melanoma")}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "loso_insource.sh"), "1"], env=env, capture_output=True,
                          text=True, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "p").glob("*.log")))
    assert done.returncode == 0, logs + done.stderr
    own = tmp_path / "p" / "train-older-own"
    linked = {label: sorted(p.name for p in (own / label).iterdir()) for label in ("melanoma", "nevus")}
    assert len(linked["melanoma"]) == len(linked["nevus"]) == 10 and f"{shared_row[1]}.jpg" not in linked["nevus"]
    run = tmp_path / "p" / "full-seed1"
    assert json.loads((run / "model.json").read_text())["class_names"] == ["melanoma", "nevus"]
    scored = json.loads((run / "heldout-eval" / "metrics.json").read_text())
    assert scored["melanoma"]["n_melanoma"] == 10
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "loso_insource.sh"), "1"],
                         env={**env, "TRAIN_SOURCE": "clinic"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "TRAIN_SOURCE must be ham10000 or older, got clinic" in bad.stderr


def test_heldout_by_class_scores_melanoma_against_each_diagnosis(tmp_path, capsys):
    """AUC against every non-melanoma and each diagnosis alone, the share of each diagnosis alerted; an image the
    metadata does not know is counted and left out, and a run's label conflict (metrics.json) left out; a run
    without predictions is a one-line error."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from heldout_by_class import main

    (tmp_path / "meta.csv").write_text("lesion_id,image_id,dx\n" + "".join(
        f"HAM_{i},ISIC_{i},{dx}\n" for i, dx in enumerate(["mel"] * 4 + ["nv"] * 5 + ["bcc"] * 4)))
    probs = [0.9, 0.8, 0.7, 0.6] + [0.1, 0.2, 0.3, 0.65, 0.99] + [0.95, 0.85, 0.75, 0.5]
    run = tmp_path / "run"
    (run / "heldout-eval").mkdir(parents=True)
    lines = ["path,melanoma_probability,melanoma_alert"] + [
        f"/x/ISIC_{i}.jpg,{p},{str(p >= 0.6).lower()}" for i, p in enumerate(probs)] + ["/x/other.jpg,0.5,false"]
    (run / "heldout-eval" / "predictions.csv").write_text("\n".join(lines) + "\n")
    conflict = {"label_conflicts": {"scored": False, "images": ["/x/ISIC_8.jpg"]}}  # the nevus at 0.99
    (run / "heldout-eval" / "metrics.json").write_text(json.dumps(conflict))
    assert main([str(run), "--metadata", str(tmp_path / "meta.csv")]) == 0
    header, _, row = capsys.readouterr().out.splitlines()
    assert header.split(" | ")[3:5] == ["vs bcc", "vs nv"]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[0].endswith("(1 unknown left out)") and cells[1] == "4 / 8"
    assert cells[3:5] == ["0.438", "0.938"]  # vs bcc: 7 of 16 pairs ranked right; vs nv: 15 of 16
    assert cells[5:] == ["100%", "75%", "25%"]
    assert main([str(run / "heldout-eval" / "predictions.csv"), "--metadata", str(tmp_path / "meta.csv")]) == 0
    cells = [c.strip() for c in capsys.readouterr().out.splitlines()[2].split("|")[1:-1]]
    assert cells[1] == "4 / 9" and cells[4] == "0.750"  # a CSV as given: the conflicting nevus is scored
    with (tmp_path / "meta.csv").open("a") as fh:  # a diagnosis no scored image has: its cells are "-"
        fh.write("HAM_99,ISIC_99,df\n")
    assert main([str(run), "--metadata", str(tmp_path / "meta.csv")]) == 0
    cells = [c.strip() for c in capsys.readouterr().out.splitlines()[2].split("|")[1:-1]]
    assert cells[3:] == ["0.438", "-", "0.938", "100%", "75%", "-", "25%"]
    assert main([str(tmp_path / "missing"), "--metadata", str(tmp_path / "meta.csv")]) == 2
    assert "missing/heldout-eval/predictions.csv: not found" in capsys.readouterr().err
    (run / "heldout-eval" / "metrics.json").unlink()
    assert main([str(run), "--metadata", str(tmp_path / "meta.csv")]) == 2
    assert "heldout-eval/metrics.json: not found" in capsys.readouterr().err
    (tmp_path / "other.csv").write_text("path,label\n")
    assert main([str(run), "--metadata", str(tmp_path / "other.csv")]) == 2
    assert "other.csv: not HAM10000 metadata" in capsys.readouterr().err
