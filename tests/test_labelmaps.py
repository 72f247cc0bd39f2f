"""Label-map presets, YAML maps, probability summing and uncovered dataset labels."""

import numpy as np
import pytest

from melanoma import labelmaps as L
from melanoma.errors import ConfigError

MODEL = ["actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma", "nevus",
         "pigmented benign keratosis", "seborrheic keratosis", "squamous cell carcinoma", "vascular lesion"]
HAM_DX = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def _probs(n=20, seed=0):
    p = np.random.default_rng(seed).random((n, len(MODEL)))
    return p / p.sum(axis=1, keepdims=True)


def test_is_melanoma_label_reads_every_source_spelling_and_nothing_else():
    assert all(L.is_melanoma_label(x) for x in ("melanoma", "Melanoma ", "mel", "MEL"))
    assert not any(L.is_melanoma_label(x) for x in ("nevus", "nv", "melanocytic nevus", "", None))


def test_isic2018_sums_the_documented_groups_and_reads_ham_codes():
    p = _probs()
    mapped, targets = L.apply_label_map(p, MODEL, "isic2018")
    assert targets == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    col = {name: p[:, MODEL.index(name)] for name in MODEL}
    np.testing.assert_allclose(mapped[:, 0], col["melanoma"])
    np.testing.assert_allclose(mapped[:, 3], col["actinic keratosis"] + col["squamous cell carcinoma"])
    np.testing.assert_allclose(mapped[:, 4], col["pigmented benign keratosis"] + col["seborrheic keratosis"])
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0)
    resolved = L.resolve_label_map("isic2018", MODEL)
    assert resolved.melanoma_class == "MEL"
    idx, uncovered = L.map_dataset_labels(HAM_DX, resolved)
    assert [targets[i] for i in idx] == ["AKIEC", "BCC", "BKL", "DF", "MEL", "NV", "VASC"] and uncovered == {}
    # the model's own class names (the 9-class Train folders) are understood too
    idx, uncovered = L.map_dataset_labels(MODEL, resolved)
    assert [targets[i] for i in idx] == ["AKIEC", "BCC", "DF", "MEL", "NV", "BKL", "BKL", "AKIEC", "VASC"]


def test_isic2019_keeps_ak_and_scc_apart_and_reads_its_column_names():
    p = _probs()
    mapped, targets = L.apply_label_map(p, MODEL, "isic2019")
    assert targets == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    col = {name: p[:, MODEL.index(name)] for name in MODEL}
    np.testing.assert_allclose(mapped[:, 3], col["actinic keratosis"])
    np.testing.assert_allclose(mapped[:, 7], col["squamous cell carcinoma"])
    np.testing.assert_allclose(mapped[:, 4], col["pigmented benign keratosis"] + col["seborrheic keratosis"])
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0)
    resolved = L.resolve_label_map("isic2019", MODEL)
    idx, uncovered = L.map_dataset_labels(["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "akiec"], resolved)
    assert idx.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, -1] and uncovered == {"akiec": 1}  # AK + SCC: ambiguous
    with pytest.raises(ConfigError):  # a HAM10000-coded model has no separate SCC class to score
        L.resolve_label_map("isic2019", HAM_DX)


def test_isic2017_has_an_explicit_other_bucket_and_leaves_bkl_uncovered():
    p = _probs()
    mapped, targets = L.apply_label_map(p, MODEL, "isic2017")
    assert targets == ["melanoma", "seborrheic keratosis", "nevus", "other"]
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0)  # nothing vanished into thin air
    others = [MODEL.index(c) for c in MODEL if c not in ("melanoma", "seborrheic keratosis", "nevus")]
    np.testing.assert_allclose(mapped[:, 3], p[:, others].sum(axis=1))
    resolved = L.resolve_label_map("isic2017", MODEL)
    idx, uncovered = L.map_dataset_labels(HAM_DX + ["bkl", "seborrheic_keratosis"], resolved)
    assert uncovered == {"bkl": 2}
    assert targets[idx[-1]] == "seborrheic keratosis" and targets[idx[1]] == "other"


def test_binary_preset():
    p = _probs()
    mapped, targets = L.apply_label_map(p, MODEL, "binary")
    assert targets == ["melanoma", "other"]
    np.testing.assert_allclose(mapped[:, 0], p[:, 3])
    np.testing.assert_allclose(mapped[:, 1], 1 - p[:, 3])
    idx, uncovered = L.map_dataset_labels(["mel", "nv", "melanoma", "melanom"], L.resolve_label_map("binary", MODEL))
    assert idx.tolist() == [0, 1, 0, -1] and uncovered == {"melanom": 1}  # unknown labels (typos) are not guessed
    # the vocabularies of ISIC 2019 (codes) and ISIC 2020 (benign diagnoses) are known, not guessed
    named = ["AK", "SCC", "BKL", "benign", "lentigo NOS", "solar lentigo", "lichenoid keratosis",
             "cafe-au-lait macule", "atypical melanocytic proliferation"]
    idx, uncovered = L.map_dataset_labels(named, L.resolve_label_map("binary", MODEL))
    assert idx.tolist() == [1] * len(named) and uncovered == {}
    ham_model = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]  # a model trained on HAM10000 codes ...
    idx, uncovered = L.map_dataset_labels(["melanoma", "nevus", "seborrheic keratosis"],  # ... on 9-class folders
                                          L.resolve_label_map("binary", ham_model))
    assert idx.tolist() == [0, 1, 1] and uncovered == {}


def test_yaml_map_with_dataset_labels(tmp_path):
    f = tmp_path / "keratinocytic.yaml"
    f.write_text("melanoma: [melanoma]\n"
                 "keratinocytic: [actinic keratosis, basal cell carcinoma, squamous cell carcinoma]\n"
                 "other: ['*']\n"
                 "dataset_labels:\n  MEL: melanoma\n  KC: keratinocytic\n")
    resolved = L.resolve_label_map(str(f), MODEL)
    assert resolved.target_classes == ["melanoma", "keratinocytic", "other"]
    assert resolved.melanoma_class == "melanoma"
    idx, uncovered = L.map_dataset_labels(["mel", "KC", "nevus", "lentigo", None], resolved)
    assert idx.tolist() == [0, 1, 2, -1, -1]
    assert uncovered == {"(no label)": 1, "lentigo": 1}


@pytest.mark.parametrize("text,message", [
    ("melanoma: [melanoma]\n", "in no target"),
    ("a: [melanoma]\nb: [melanoma]\nc: ['*']\n", "both"),
    ("a: [melanoma]\nb: [no such class]\nc: ['*']\n", "match none"),
    ("a: [melanoma]\nc: ['*']\ndataset_labels: {x: zzz}\n", "unknown target"),
    ("- just a list\n", "mapping"),
])
def test_bad_yaml_maps_raise_one_line_config_errors(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        L.resolve_label_map(str(f), MODEL)


def test_unknown_preset_and_identity():
    with pytest.raises(ConfigError, match="not a preset"):
        L.load_label_map("isic2099")
    resolved = L.resolve_label_map(None, MODEL)
    idx, uncovered = L.map_dataset_labels(["melanoma", "Melanoma", "mel"], resolved)
    assert idx.tolist() == [3, 3, -1] and uncovered == {"mel": 1}
    mapped, targets = L.apply_label_map(_probs(), MODEL, None)
    assert targets == MODEL
