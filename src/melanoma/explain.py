"""Grad-CAM heatmaps (pytorch-grad-cam): where the model looked, written as one PNG panel per image and target.

For each image two targets: the predicted class ("pred-<class>") and melanoma ("melanoma"). Each panel shows
  * the whole image as the model saw it (resized and colour-processed as in model.json's preprocessing), with the
    centre crop the model classified outlined: what lies outside that box was never seen;
  * the Grad-CAM map over that crop, with a colour bar (the map is relative: 1 = the region that raised this
    class's score most in THIS image; maps of two images are not comparable);
  * a header with the calibrated melanoma probability, the alert and the referral, exactly as predict reports
    them (the probability is printed with enough digits that it never seems to contradict the alert).
PyTorch models only (ONNX has no gradients).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from melanoma import plots
from melanoma.errors import ModelError

CAM_LABEL = "Grad-CAM relevance (relative: 1 = strongest region in this image)"


def _denormalise(x: torch.Tensor, pre: dict) -> np.ndarray:
    """Normalised CHW tensor -> float HWC image in [0, 1] (what show_cam_on_image expects)."""
    mean = torch.tensor(pre["mean"]).view(3, 1, 1)
    std = torch.tensor(pre["std"]).view(3, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float32)


def _target_slug(class_name: str) -> str:
    return class_name.strip().lower().replace(" ", "-").replace("/", "-")


def _targets(predictor, prediction) -> dict[str, int]:
    """{file suffix: class index}: the predicted class, and melanoma when the model has that class."""
    out = {f"pred-{_target_slug(prediction.prediction)}": predictor.class_names.index(prediction.prediction)}
    if predictor.melanoma_index is not None:
        out["melanoma"] = predictor.melanoma_index
    return out


def gradcam_maps(predictor, x: torch.Tensor, class_indices: list[int]) -> np.ndarray:
    """Grad-CAM maps [len(class_indices), S, S] in [0, 1] for ONE normalised image x [3, S, S]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from melanoma.models import find_gradcam_layer

    model = predictor.model  # ModelError for ONNX
    batch = x.unsqueeze(0).repeat(len(class_indices), 1, 1, 1)  # one forward/backward for all targets
    with torch.enable_grad(), GradCAM(model=model, target_layers=[find_gradcam_layer(model)]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(i) for i in class_indices])
    return np.nan_to_num(maps)  # a constant activation map gives 0/0


def gradcam_overlays(predictor, image, targets: dict[str, int] | None = None) -> dict[str, Image.Image]:
    """{target name: overlay RGB image at the model input size}; targets default to predicted class + melanoma."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    targets = targets or _targets(predictor, predictor.predict([image])[0])
    x = predictor.preprocess(image)
    rgb = _denormalise(x, predictor.meta["preprocessing"])
    maps = gradcam_maps(predictor, x, list(targets.values()))
    return {name: Image.fromarray(show_cam_on_image(rgb, m, use_rgb=True)) for name, m in zip(targets, maps)}


def whole_view(predictor, image) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(the image after the model's resize + colour processing, before the centre crop, as uint8 RGB;
    (left, top, size) of the centre crop the model classifies, in that image's pixels)."""
    from melanoma.transforms import prepare_image

    pre = predictor.meta["preprocessing"]
    prepared = prepare_image(image, pre)
    size = int(pre["input_size"])
    # torchvision's CenterCrop: offset int(round((W - S) / 2)); eval_transform's Resize is a no-op after this
    left, top = int(round((prepared.width - size) / 2.0)), int(round((prepared.height - size) / 2.0))
    return np.asarray(prepared.convert("RGB")), (left, top, size)


def _pair(p: float, threshold: float) -> tuple[str, str]:
    """p and the threshold with the fewest decimals (2..6) at which they differ, so '0.06 >= 0.06' never shows."""
    for digits in range(2, 7):
        a, b = f"{p:.{digits}f}", f"{threshold:.{digits}f}"
        if a != b:
            return a, b
    return f"{p:.6f}", f"{threshold:.6f}"


def status_lines(predictor, prediction) -> list[tuple[str, str]]:
    """The header of a panel: (text, colour) for the alert and the referral, worded from the prediction's own
    flags (the alert line cannot disagree with the CSV)."""
    if predictor.melanoma_index is None or np.isnan(prediction.melanoma_probability):
        alert = ("No melanoma alert: this model has no melanoma class", plots.CALM_COLOUR)
    else:
        p, t = _pair(prediction.melanoma_probability, predictor.alert_threshold)
        alert = ((f"MELANOMA ALERT: melanoma probability {p} (calibrated) >= alert threshold {t}", plots.ALERT_COLOUR)
                 if prediction.melanoma_alert else
                 (f"No melanoma alert: melanoma probability {p} (calibrated) < alert threshold {t}",
                  plots.CALM_COLOUR))
    refer = ((f"REFER: do not rely on the model for this image ({prediction.refer_reason or 'see referral rules'})",
              plots.REFER_COLOUR) if prediction.refer else
             ("No referral: no reason found to distrust the model on this image", plots.CALM_COLOUR))
    warning = [(f"IMAGE QUALITY: {prediction.warning}", plots.REFER_COLOUR)] if prediction.warning else []
    return [alert, refer, *warning]


def _title(path: Path, predictor, prediction, target_index: int, empty: bool) -> str:
    cls = predictor.class_names[target_index]
    text = (f"{path.name}: predicted {prediction.prediction} ({prediction.confidence:.2f}); "
            f"heatmap for class '{cls}' (p = {prediction.probabilities[cls]:.2f})")
    return text + ("; map empty: no region raised this class's score" if empty else "")


def write_panel(predictor, image, path: Path, prediction, target_index: int, cam: np.ndarray, out) -> Path:
    """One PNG panel (see the module docstring) for one image, one target class and its Grad-CAM map."""
    whole, box = whole_view(predictor, image)
    model_input = (_denormalise(predictor.preprocess(image), predictor.meta["preprocessing"]) * 255).round()
    empty = float(cam.max()) < 1e-6
    return plots.gradcam_panel_figure(whole, box, model_input.astype(np.uint8), cam, out,
                                      _title(path, predictor, prediction, target_index, empty),
                                      status_lines(predictor, prediction), CAM_LABEL)


def write_explanations(predictor, paths, out_dir, predictions=None) -> list[Path]:
    """Write `<stem>_<target>.png` (target: `melanoma`, `pred-<class>`) for every image; returns the files.

    predictions: the Prediction of each path as already reported (e.g. with TTA), so the panel shows the same
    probability, alert and referral as the CSV; None = predict each image here (the model's own views).
    Two images with the same file stem in different folders get `_2`, `_3`... appended to the stem.
    """
    from melanoma.data import load_image

    if predictor.backend.kind != "pytorch":
        raise ModelError("Grad-CAM (--explain) needs the PyTorch model (run folder or model.json), not an ONNX file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], {}
    for i, path in enumerate(map(Path, paths)):
        image = load_image(path)
        prediction = predictions[i] if predictions is not None else predictor.predict([image])[0]
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stem = path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}"
        targets = _targets(predictor, prediction)
        maps = gradcam_maps(predictor, predictor.preprocess(image), list(targets.values()))
        for (name, index), cam in zip(targets.items(), maps):
            written.append(write_panel(predictor, image, path, prediction, index, cam,
                                       out_dir / f"{stem}_{name}.png"))
    return written
