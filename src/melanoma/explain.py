"""Grad-CAM heatmaps (pytorch-grad-cam) over the eval-preprocessed image: where the model looked.

For each image two targets: the predicted class ("pred-<class>") and melanoma ("melanoma"). Each PNG shows the
model's input view (resized + centre-cropped, de-normalised) on the left, the heatmap overlay on the right,
and a caption with the target class and its (temperature-scaled) probability. PyTorch models only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from melanoma.errors import ModelError

MIN_DISPLAY = 224        # px: small model inputs (e.g. 64) are upscaled so the caption stays readable
CAPTION_HEIGHT = 28      # px strip below the two panels


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


def _overlays(predictor, image, targets: dict[str, int]) -> dict[str, tuple[Image.Image, bool]]:
    """{target name: (overlay at model input size, map_is_empty)}."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    x = predictor.preprocess(image)
    maps = gradcam_maps(predictor, x, list(targets.values()))
    rgb = _denormalise(x, predictor.meta["preprocessing"])
    return {name: (Image.fromarray(show_cam_on_image(rgb, m, use_rgb=True)), float(m.max()) < 1e-6)
            for name, m in zip(targets, maps)}


def gradcam_overlays(predictor, image, targets: dict[str, int] | None = None) -> dict[str, Image.Image]:
    """{target name: overlay RGB image at the model input size}; targets default to predicted class + melanoma."""
    targets = targets or _targets(predictor, predictor.predict([image])[0])
    return {name: overlay for name, (overlay, _) in _overlays(predictor, image, targets).items()}


def _panel(view: Image.Image, overlay: Image.Image, caption: str) -> Image.Image:
    """[input view | overlay] with a caption strip below, upscaled to at least MIN_DISPLAY px."""
    size = max(MIN_DISPLAY, view.width)
    canvas = Image.new("RGB", (2 * size, size + CAPTION_HEIGHT), "white")
    canvas.paste(view.resize((size, size), Image.Resampling.BICUBIC), (0, 0))
    canvas.paste(overlay.resize((size, size), Image.Resampling.BICUBIC), (size, 0))
    font = ImageFont.load_default(size=16)
    ImageDraw.Draw(canvas).text((6, size + 5), caption, fill="black", font=font)
    return canvas


def write_explanations(predictor, paths, out_dir) -> list[Path]:
    """Write `<stem>_<target>.png` (target: `melanoma`, `pred-<class>`) for every image; returns the files.

    Two images with the same file stem in different folders get `_2`, `_3`... appended to the stem.
    """
    from melanoma.data import load_image

    if predictor.backend.kind != "pytorch":
        raise ModelError("Grad-CAM (--explain) needs the PyTorch model (run folder or model.json), not an ONNX file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, seen = [], {}
    for path in map(Path, paths):
        image = load_image(path)
        prediction = predictor.predict([image])[0]
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stem = path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}"
        targets = _targets(predictor, prediction)
        view = Image.fromarray((_denormalise(predictor.preprocess(image), predictor.meta["preprocessing"]) * 255)
                               .round().astype(np.uint8))
        for name, (overlay, empty) in _overlays(predictor, image, targets).items():
            cls = predictor.class_names[targets[name]]
            caption = (f"{'predicted' if name.startswith('pred-') else 'Grad-CAM for'} {cls}: "
                       f"p = {prediction.probabilities[cls]:.2f}" + (" (map empty)" if empty else ""))
            file = out_dir / f"{stem}_{name}.png"
            _panel(view, overlay, caption).save(file)
            written.append(file)
    return written
