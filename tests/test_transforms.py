"""Train/eval presets and TTA views."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from melanoma.config import COLOR_CONSTANCY, TrainConfig
from melanoma.errors import ConfigError
from melanoma.images import VIGNETTE_LEVEL, apply_color_constancy, bilateral_smooth, noise_sigma
from melanoma.transforms import (TTA_VIEW_NAMES, RandomDetailLoss, RandomHair, RandomInk, RandomNoise, RandomRot90,
                                 SourceNoiseMatch, augmentation_ops, eval_transform, invert_tta_views, prepare_image,
                                 shades_of_gray, train_transform, tta_views)

PRE = {"input_size": 64, "resize": 73, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture
def pil_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))


def level_ops(level: str) -> list:
    """augmentation_ops of a level at 64 px, RandomApply wrappers opened: the transforms the level can apply."""
    return [t for op in augmentation_ops(64, level=level) for t in getattr(op, "transforms", [op])]


def level_kinds(level: str) -> set[str]:
    """The class names of the transforms a level can apply (level_ops)."""
    return {type(t).__name__ for t in level_ops(level)}


def as_uint8_tensor(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("make", [train_transform, eval_transform])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_presets_shape_and_dtype(pil_image, make, as_tensor):
    x = as_uint8_tensor(pil_image) if as_tensor else pil_image
    out = make(PRE)(x)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert -1.0 - 1e-6 <= out.min() and out.max() <= 1.0 + 1e-6  # mean/std 0.5 -> [-1, 1]


def test_eval_is_deterministic_and_same_for_pil_and_tensor(pil_image):
    t = eval_transform(PRE)
    a, b = t(pil_image), t(pil_image)
    assert torch.equal(a, b)
    assert torch.equal(a, t(as_uint8_tensor(pil_image)))


def test_eval_uses_shorter_side_resize_then_centre_crop():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[:, :, 50:150] = 255  # a white centre band exactly as wide as the crop after resize to 100
    out = eval_transform({**PRE, "input_size": 100, "resize": 100, "mean": [0] * 3, "std": [1] * 3})(image)
    assert out.shape == (3, 100, 100) and out.min() > 0.99


def test_train_is_random(pil_image):
    t = train_transform(PRE)
    torch.manual_seed(0)
    assert not torch.equal(t(pil_image), t(pil_image))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_strong_augmentation_adds_blur_and_jpeg_and_keeps_the_output_contract(pil_image, as_tensor):
    assert {"GaussianBlur", "JPEG"} <= level_kinds("strong") and not {"GaussianBlur", "JPEG"} & level_kinds("standard")
    x = as_uint8_tensor(pil_image) if as_tensor else pil_image
    torch.manual_seed(0)
    outs = [train_transform(PRE, "strong")(x) for _ in range(8)]  # JPEG needs uint8: it runs before ToDtype
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    assert all(-1.0 - 1e-6 <= o.min() and o.max() <= 1.0 + 1e-6 for o in outs)


def test_strong_colour_is_the_strong_jitter_without_blur_and_jpeg():
    jitter = lambda level: next(t for t in level_ops(level) if isinstance(t, v2.ColorJitter))  # noqa: E731
    assert not {"GaussianBlur", "JPEG"} & level_kinds("strong-colour")
    assert jitter("strong-colour").hue == jitter("strong").hue == (-0.05, 0.05)
    assert jitter("strong-colour").brightness == jitter("strong").brightness != jitter("standard").brightness


@pytest.mark.parametrize("as_tensor", [False, True])
def test_resolution_augmentation_keeps_the_size_and_loses_detail(as_tensor):
    assert "RandomDetailLoss" in level_kinds("resolution") and "RandomDetailLoss" not in level_kinds("standard")
    stripes = _fine_stripes(90)
    x = as_uint8_tensor(stripes) if as_tensor else stripes
    lose = RandomDetailLoss(0.4)
    torch.manual_seed(0)
    outs = [lose(x) for _ in range(5)]
    size = lambda im: tuple(im.shape[-2:]) if as_tensor else im.size[::-1]  # noqa: E731
    assert all(size(o) == (90, 120) for o in outs)  # same size, less detail
    contrast = lambda im: np.asarray(im, dtype=np.float32).std()  # noqa: E731
    assert all(contrast(o) < 0.9 * contrast(x) for o in outs)
    torch.manual_seed(0)
    out = [train_transform(PRE, "resolution")(x) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in out)
    with pytest.raises(ConfigError, match="min_scale must be in"):
        RandomDetailLoss(0.0)
    TrainConfig(data="x", augmentation="resolution").validate()


def test_geometric_augmentation_leaves_the_colours_alone():
    kinds = lambda level: {type(op).__name__ for op in augmentation_ops(64, level=level)}  # noqa: E731
    assert kinds("standard") - kinds("geometric") == {"ColorJitter"}
    flat = Image.new("RGB", (90, 90), (180, 120, 100))  # one colour: any geometric view keeps it everywhere
    torch.manual_seed(0)
    views = [train_transform({**PRE, "mean": [0.0] * 3, "std": [1.0] * 3}, "geometric")(flat) for _ in range(6)]
    centre = torch.stack([v[:, 24:40, 24:40] for v in views])  # affine fill (black) stays in the corners
    assert torch.allclose(centre, torch.tensor([180, 120, 100]).view(1, 3, 1, 1) / 255.0, atol=1 / 255)
    TrainConfig(data="x", augmentation="geometric").validate()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_augmix_blends_augmented_chains_into_the_standard_view(pil_image, as_tensor):
    assert level_kinds("augmix") - level_kinds("standard") == {"AugMix"}
    x = as_uint8_tensor(pil_image) if as_tensor else pil_image
    torch.manual_seed(0)
    outs = [train_transform(PRE, "augmix")(x) for _ in range(6)]  # posterize and equalize need the uint8 view
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    assert all(-1.0 - 1e-6 <= o.min() and o.max() <= 1.0 + 1e-6 for o in outs)
    flat = Image.new("RGB", (90, 90), (180, 120, 100))  # AugMix alone moves a flat colour: it is not a no-op
    mixed = v2.AugMix(fill=0)
    torch.manual_seed(1)
    assert any(not torch.equal(mixed(as_uint8_tensor(flat)), as_uint8_tensor(flat)) for _ in range(6))
    TrainConfig(data="x", augmentation="augmix").validate()


@pytest.mark.parametrize("as_tensor", [False, True])
def test_jpeg_level_recompresses_half_the_draws_before_the_crop(pil_image, as_tensor):
    ops = augmentation_ops(64, level="jpeg")
    assert level_kinds("jpeg") - level_kinds("standard") == {"JPEG"}
    assert type(ops[0]).__name__ == "RandomApply" and ops[0].p == 0.5 and type(ops[1]).__name__ == "RandomResizedCrop"
    x = as_uint8_tensor(pil_image) if as_tensor else pil_image
    torch.manual_seed(0)
    outs = [train_transform(PRE, "jpeg")(x) for _ in range(6)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    TrainConfig(data="x", augmentation="jpeg").validate()


def test_erasing_blanks_one_rectangle_in_about_half_the_views():
    flat = Image.new("RGB", (90, 90), (180, 120, 100))
    transform = train_transform(PRE, "erasing")  # mean = std = 0.5: no uint8 colour normalises to exactly 0
    torch.manual_seed(0)
    areas = []
    for _ in range(40):
        erased = (transform(flat) == 0).all(dim=0)  # erasing writes 0 to every channel, after the normalisation
        rows, cols = erased.any(dim=1).nonzero(), erased.any(dim=0).nonzero()
        if erased.any():  # one filled rectangle: its bounding box is all erased
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
            assert int(erased.sum()) == int(box)
        areas.append(float(erased.float().mean()))
    hit = [a for a in areas if a > 0]
    assert 10 <= len(hit) <= 30
    assert all(0.015 <= a <= 0.26 for a in hit)
    TrainConfig(data="x", augmentation="erasing").validate()


def test_zoom_widens_the_crop_and_affine_scales_only():
    def scales(level):
        ops = {type(op).__name__: op for op in augmentation_ops(64, level=level)}
        return ops["RandomResizedCrop"].scale, ops["RandomAffine"].scale, len(ops)

    assert scales("standard") == ((0.6, 1.0), (0.9, 1.1), 6)
    assert scales("zoom") == ((0.3, 1.0), (0.75, 1.25), 6)  # same ops, colour jitter included
    TrainConfig(data="x", augmentation="zoom").validate()


def test_hair_draws_thin_dark_strands_and_only_darkens():
    skin = torch.tensor([220, 170, 150], dtype=torch.uint8).view(3, 1, 1).expand(3, 120, 160).clone()
    torch.manual_seed(0)
    for _ in range(10):
        haired = RandomHair()(skin)
        changed = (haired != skin).any(dim=0)
        assert 0.002 < changed.float().mean() < 0.25  # strands, not a cast over the image
        assert (haired <= skin).all()  # hair only darkens
        darkest = haired.flatten(1)[:, haired[0].flatten().argmin()]
        assert darkest[0] < 140 and darkest[0] >= darkest[1] >= darkest[2]  # brown-black: red >= green >= blue
    image = Image.new("RGB", (40, 30), (220, 170, 150))
    assert RandomHair()(image) is image  # PIL images pass: augmentation_ops runs on uint8 tensors


def test_hair_level_draws_on_half_the_views_before_the_crop():
    first, *rest = augmentation_ops(64, level="hair")
    assert isinstance(first, v2.RandomApply) and first.p == 0.5 and isinstance(first.transforms[0], RandomHair)
    assert [type(op) for op in rest] == [type(op) for op in augmentation_ops(64, level="standard")]
    TrainConfig(data="x", augmentation="hair").validate()


def test_ink_draws_a_violet_ring_round_the_middle_and_leaves_the_lesion():
    """The marker ring: violet where drawn, a ring (the middle and the far corners untouched,
    a thin share of the image), dashed or whole; PIL images pass."""
    skin = torch.tensor([220, 170, 150], dtype=torch.uint8).view(3, 1, 1).expand(3, 150, 200).clone()
    torch.manual_seed(0)
    solid = 0
    for _ in range(20):
        params = RandomInk().make_params([skin])
        inked = RandomInk().transform(skin, params)
        changed = (inked != skin).any(dim=0)
        assert 0.01 < changed.float().mean() < 0.25  # a ring, not a cast over the image
        assert not changed[65:85, 90:110].any() and not changed[:5, :5].any()  # the middle and a far corner stay
        drop = (skin.float() - inked.float()).flatten(1)
        red, green, blue = drop[:, drop.sum(0).argmax()].tolist()  # where the ink is densest
        assert red > blue and green > blue  # violet on skin: red and green fall, blue far less
        solid += params["dashes"] == 0
    assert 0 < solid < 20  # whole rings and dashed ones
    image = Image.new("RGB", (40, 30), (220, 170, 150))
    assert RandomInk()(image) is image


def test_ink_level_draws_on_half_the_views_before_the_crop():
    first, *rest = augmentation_ops(64, level="ink")
    assert isinstance(first, v2.RandomApply) and first.p == 0.5 and isinstance(first.transforms[0], RandomInk)
    assert [type(op) for op in rest] == [type(op) for op in augmentation_ops(64, level="standard")]
    TrainConfig(data="x", augmentation="ink").validate()


def test_marks_draw_rings_and_arrows_round_the_middle_never_dots():
    """"marks": rings and violet arrows, both clear of the middle; a kind it does not know is a ConfigError."""
    skin = torch.tensor([220, 170, 150], dtype=torch.uint8).view(3, 1, 1).expand(3, 150, 200).clone()
    torch.manual_seed(1)
    marks, kinds = RandomInk(("ring", "arrow")), []
    for _ in range(20):
        params = marks.make_params([skin])
        inked = marks.transform(skin, params)
        changed = (inked != skin).any(dim=0)
        assert 0.003 < changed.float().mean() < 0.25
        assert not changed[65:85, 90:110].any()  # the lesion in the middle stays
        drop = (skin.float() - inked.float()).flatten(1)
        red, green, blue = drop[:, drop.sum(0).argmax()].tolist()
        assert red > blue and green > blue
        kinds.append(params["mark"])
    assert set(kinds) == {"ring", "arrow"}
    with pytest.raises(ConfigError, match="dot"):
        RandomInk(("ring", "dot"))
    first = augmentation_ops(64, level="marks")[0]
    assert first.p == 0.5 and first.transforms[0].marks == ("ring", "arrow")
    TrainConfig(data="x", augmentation="marks").validate()


def test_noise_adds_gaussian_noise_of_the_drawn_level_and_keeps_uint8():
    skin = torch.tensor([200, 150, 130], dtype=torch.uint8).view(3, 1, 1).expand(3, 120, 160).clone()
    torch.manual_seed(0)
    noise = RandomNoise(max_sigma=8.0)
    for sigma in (1.0, 4.0, 8.0):
        noisy = noise.transform(skin, {"sigma": sigma})
        assert noisy.dtype == torch.uint8 and noisy.shape == skin.shape
        residual = noisy.float() - skin.float()
        assert abs(residual.std().item() - sigma) < 0.1 * sigma + 0.3  # + rounding to whole grey levels
        assert abs(residual.mean().item()) < 0.2  # no brightness change
    sigmas = [noise.make_params([skin])["sigma"] for _ in range(200)]
    assert 0.0 <= min(sigmas) < 1.0 and 7.0 < max(sigmas) <= 8.0
    white = torch.full((3, 20, 20), 255, dtype=torch.uint8)
    assert noise.transform(white, {"sigma": 8.0}).max() == 255  # clipped, not wrapped around
    image = Image.new("RGB", (40, 30), (220, 170, 150))
    assert noise(image) is image  # PIL images pass: augmentation_ops runs on uint8 tensors
    with pytest.raises(ConfigError):
        RandomNoise(max_sigma=0)


def test_noise_level_adds_noise_to_half_the_views_before_the_crop(pil_image):
    first, *rest = augmentation_ops(64, level="noise")
    assert isinstance(first, v2.RandomApply) and first.p == 0.5 and isinstance(first.transforms[0], RandomNoise)
    assert [type(op) for op in rest] == [type(op) for op in augmentation_ops(64, level="standard")]
    torch.manual_seed(0)
    outs = [train_transform(PRE, "noise")(pil_image) for _ in range(4)]
    assert all(o.shape == (3, 64, 64) and o.dtype == torch.float32 for o in outs)
    TrainConfig(data="x", augmentation="noise").validate()
    first, *rest = augmentation_ops(64, level="noise-mild")  # every draw, at most 2.5 grey levels
    assert isinstance(first, RandomNoise) and first.max_sigma == 2.5
    assert [type(op) for op in rest] == [type(op) for op in augmentation_ops(64, level="standard")]


def _ramp(noise: float = 0.0, seed: int = 0, size=(120, 160)) -> np.ndarray:
    """A smooth grey-to-skin gradient, HxWx3, plus `noise` grey levels of one noise plane for all channels."""
    base = np.add.outer(np.linspace(40, 200, size[0]), np.linspace(0, 30, size[1]))[..., None] * [1.0, 0.8, 0.7]
    return base + np.random.default_rng(seed).normal(0, noise, size)[..., None]


def _uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.round(array), 0, 255).astype(np.uint8)


def test_noise_sigma_reads_the_added_noise_and_not_a_smooth_image():
    """Immerkaer's estimate (images.noise_sigma): about 0 on a smooth ramp, the added standard deviation with noise."""
    assert noise_sigma(Image.fromarray(_uint8(_ramp()))) < 0.5
    assert 4.5 < noise_sigma(Image.fromarray(_uint8(_ramp(noise=5.0)))) < 5.5
    with pytest.raises(ValueError, match="too small"):
        noise_sigma(Image.new("RGB", (2, 9)))


def test_noise_match_brings_the_quieter_source_to_the_noisier_sources_levels():
    """noise-match: images of the quieter source (0.3 grey levels) come out at the noisy source's levels (2-4), the
    same noise in every channel; the noisy source's images pass untouched; one source: nothing to match."""
    noisy = [_ramp(noise=level, seed=i) for i, level in enumerate(np.linspace(2.0, 4.0, 10))]
    quiet = [_ramp(noise=0.3, seed=100 + i) for i in range(10)]
    images = [torch.from_numpy(_uint8(a)).permute(2, 0, 1).contiguous() for a in noisy + quiet]
    match = SourceNoiseMatch.fit(images, np.array([1] * 10 + [0] * 10))
    assert "10 images of the less noisy" in match.summary()
    torch.manual_seed(0)
    assert all(match(images[i], i) is images[i] for i in range(10))
    after = [match(images[i], i) for i in range(10, 20) for _ in range(5)]
    levels = [noise_sigma(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in after]
    assert 1.9 < min(levels) and max(levels) < 4.2 and abs(np.median(levels) - 3.0) < 0.4
    residual = after[0].float() - images[10].float()
    assert (residual[0] - residual[1]).abs().max() <= 1 and residual[0].std() > 1.5  # one plane, up to rounding
    assert SourceNoiseMatch.fit(images, np.zeros(20)) is None


def test_fixed_scale_keeps_the_lesion_size_of_the_eval_view():
    image = Image.new("RGB", (120, 90), (230, 200, 190))
    image.paste((40, 160, 40), (50, 35, 70, 55))  # a green 20 x 20 "lesion": no blend of skin and black is green
    plain = {**PRE, "mean": [0.0] * 3, "std": [1.0] * 3}  # resize 73: the lesion becomes about 16 x 16 px

    def lesion_area(view):
        return int((view[1] - view[0] > 0.2).sum())

    def lesion_areas(level):
        torch.manual_seed(0)
        return [lesion_area(train_transform(plain, level)(image)) for _ in range(30)]

    eval_area = lesion_area(eval_transform(plain)(image))
    fixed, standard = lesion_areas("fixed-scale"), lesion_areas("standard")
    # fixed-scale: the eval view's size, give or take the edges that rotation, bilinear filling and jitter soften
    assert abs(sum(fixed) / len(fixed) / eval_area - 1) < 0.15 and max(fixed) / min(fixed) < 1.25
    assert max(standard) / min(standard) > 1.6  # crops of 60-100% and affine scale 0.9-1.1
    with pytest.raises(ConfigError, match="fixed-scale"):
        augmentation_ops(64, level="fixed-scale")  # needs the eval resize
    TrainConfig(data="x", augmentation="fixed-scale").validate()


def test_unknown_augmentation_level_is_config_error():
    with pytest.raises(ConfigError, match="augmentation level 'heavy'"):
        train_transform(PRE, "heavy")
    with pytest.raises(ConfigError, match="augmentation level 'heavy'"):
        TrainConfig(data="x", augmentation="heavy").validate()


def test_random_rot90_is_exact_for_pil_and_tensor(pil_image):
    tensor = as_uint8_tensor(pil_image)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        rotated_pil = RandomRot90()(pil_image)
        torch.manual_seed(seed)
        rotated = RandomRot90()(tensor)
        assert torch.equal(as_uint8_tensor(rotated_pil), rotated)
        seen.add(tuple(rotated.shape))
    assert seen == {(3, 90, 120), (3, 120, 90)}


def test_tta_views_count_distinct_and_invertible():
    x = torch.randn(2, 3, 8, 8)
    for n in range(1, 9):
        views = tta_views(x, n)
        assert len(views) == n and all(v.shape == x.shape for v in views)
    views = tta_views(x, 8)
    assert torch.equal(views[0], x)
    assert len({v.numpy().tobytes() for v in views}) == 8 == len(TTA_VIEW_NAMES)
    assert all(torch.equal(v, x) for v in invert_tta_views(views))
    with pytest.raises(ConfigError):
        tta_views(x, 9)
    with pytest.raises(ConfigError):
        tta_views(x, 0)


def test_unknown_interpolation_is_config_error():
    with pytest.raises(ConfigError, match="interpolation"):
        eval_transform({**PRE, "interpolation": "lanczos3"})


def _lesion_like(cast=(1.0, 1.0, 1.0), radius: int = 25) -> Image.Image:
    """Skin-toned background with a darker blob, under an illuminant `cast` (per-channel gain)."""
    yy, xx = np.mgrid[:90, :120]
    blob = ((yy - 45) ** 2 + (xx - 60) ** 2 < radius ** 2)[..., None]
    base = np.where(blob, [90.0, 60.0, 50.0], [200.0, 160.0, 140.0])
    return Image.fromarray(np.clip(base * np.asarray(cast), 0, 255).astype(np.uint8))


def _chromaticity(image) -> np.ndarray:
    x = np.asarray(image, dtype=float) + 1.0
    return x / x.sum(axis=-1, keepdims=True)  # colour without brightness (the method keeps overall intensity)


@pytest.mark.parametrize("method", [m for m in COLOR_CONSTANCY if m != "none"])  # each estimator has a power
def test_color_constancy_removes_a_colour_cast(method):
    plain = _chromaticity(apply_color_constancy(_lesion_like(), method))
    for cast in [(1.0, 0.8, 0.6), (0.7, 0.9, 1.0)]:  # a warm and a cold light source
        corrected = _chromaticity(apply_color_constancy(_lesion_like(cast), method))
        assert np.abs(corrected - plain).max() < 0.01  # same colours whatever the light
        assert np.abs(_chromaticity(_lesion_like(cast)) - _chromaticity(_lesion_like())).mean() > 0.03


def test_grey_world_lets_the_lesion_move_the_skin_colour_more_than_shades_of_gray():
    """Why Shades of Gray is the default: its 6-norm estimate is dominated by the bright skin, the plain mean of grey
    world also by the dark brown lesion, so a larger lesion shifts the corrected skin colour more."""
    def skin_shift(method):
        small, large = (_chromaticity(apply_color_constancy(_lesion_like(radius=r), method))[0, 0] for r in (10, 40))
        return np.abs(small - large).max()
    assert shades_of_gray(_lesion_like()).size == (120, 90)
    assert skin_shift("grey_world") > 2 * skin_shift("shades_of_gray") > 0
    assert np.array_equal(np.asarray(apply_color_constancy(_lesion_like(), "none")), np.asarray(_lesion_like()))


def _exposed(image: Image.Image, gain: float, offset: float) -> Image.Image:
    """The same scene under another exposure and contrast: every channel value v -> gain * v + offset."""
    return Image.fromarray(np.clip(np.asarray(image, dtype=float) * gain + offset, 0, 255).round().astype(np.uint8))


def _with_vignette(image: Image.Image) -> Image.Image:
    """Black lens corners, as many dermoscopy images have."""
    x = np.asarray(image).copy()
    yy, xx = np.mgrid[:x.shape[0], :x.shape[1]]
    x[(yy - x.shape[0] / 2) ** 2 + (xx - x.shape[1] / 2) ** 2 > 55 ** 2] = 0
    return Image.fromarray(x)


def test_standardised_exposure_gives_one_image_whatever_the_exposure_and_contrast():
    """shades_of_gray_standardised: a darker or brighter exposure of a lesion (behind a vignette) comes out as the
    normal one within rounding, a flatter or harsher contrast nearly so (an offset on every channel also tints the
    image a little, which the multiplicative Shades of Gray cannot undo exactly); plain Shades of Gray keeps both."""
    def gap(method, a, b):  # mean absolute difference after `method`, in grey levels out of 255
        a, b = (np.asarray(apply_color_constancy(im, method), dtype=float) for im in (a, b))
        return np.abs(a - b).mean()
    scene = _with_vignette(_lesion_like())
    for gain, offset in [(0.6, 0.0), (0.8, 0.0), (1.15, 0.0), (0.6, 10.0), (0.8, -20.0), (1.1, 5.0)]:
        other = _with_vignette(_exposed(_lesion_like(), gain, offset))
        plain = gap("shades_of_gray", scene, other)
        assert gap("shades_of_gray_standardised", scene, other) < (1.0 if offset == 0 else 0.15 * plain)
        assert plain > 8
    grey = np.asarray(apply_color_constancy(_lesion_like(), "shades_of_gray_standardised"), dtype=float).mean(axis=2)
    assert abs(grey.mean() / 255 - 0.64) < 0.01 and abs(grey.std() / 255 - 0.11) < 0.01


def _saturated(image: Image.Image, factor: float) -> Image.Image:
    """The same scene rendered more (factor > 1) or less colourful: each pixel's offset from its grey level scaled."""
    x = np.asarray(image, dtype=float)
    grey = x.mean(axis=2, keepdims=True)
    return Image.fromarray(np.clip(grey + (x - grey) * factor, 0, 255).round().astype(np.uint8))


def _chroma(image: Image.Image) -> float:
    """Mean distance of a pixel's RGB from its grey level, 0-1 scale, the dark vignette left out."""
    x = np.asarray(image, dtype=float) / 255
    grey = x.mean(axis=2, keepdims=True)
    return float(np.linalg.norm(x - grey, axis=2)[grey[..., 0] >= VIGNETTE_LEVEL].mean())


def test_standardised_chroma_gives_every_rendering_one_colourfulness(shared_train):
    """shades_of_gray_standardised_chroma on real lesions: a paler or more saturated rendering (a camera's choice,
    which Shades of Gray and the exposure step keep: about 0.7x / 1.3x after them) comes out at the target
    colourfulness (the gain limited to 2), as the normal one does; the grey levels are the exposure step's."""
    for path in sorted((shared_train / "melanoma").glob("*.jpg"))[:3]:
        scene = Image.open(path).convert("RGB")
        normal = _chroma(apply_color_constancy(scene, "shades_of_gray_standardised"))
        for factor in (0.7, 1.3):
            other = _saturated(scene, factor)
            kept = _chroma(apply_color_constancy(other, "shades_of_gray_standardised"))
            assert abs(kept / normal - factor) < 0.1
            target = min(0.05, 2 * kept)  # the gain is at most 2: these 9-class images are pale (0.027-0.032)
            assert abs(_chroma(apply_color_constancy(other, "shades_of_gray_standardised_chroma")) - target) < 0.002
    both = [np.asarray(apply_color_constancy(_lesion_like(), m), dtype=float)
            for m in ("shades_of_gray_standardised", "shades_of_gray_standardised_chroma")]
    assert np.abs(both[0].mean(axis=2) - both[1].mean(axis=2)).max() <= 1.0


def test_denoised_halves_noise_on_real_lesions_and_keeps_an_edge(shared_train):
    """shades_of_gray_standardised_denoised is the standardised image after bilateral_smooth: on real lesions the
    smoothed noisy image (noise of 6 grey levels) lies at most half as far from the smoothed clean one as the
    noisy image from the clean one; a step of 100 grey levels keeps its height, a flat area stays flat."""
    rng = np.random.default_rng(0)
    for path in sorted((shared_train / "melanoma").glob("*.jpg"))[:3]:
        clean = apply_color_constancy(Image.open(path).convert("RGB"), "shades_of_gray_standardised")
        x = np.asarray(clean, dtype=float)
        noisy = Image.fromarray(np.clip(x + rng.normal(0, 6, x.shape), 0, 255).round().astype(np.uint8))
        rms = lambda a, b: np.sqrt(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))  # noqa: E731
        assert rms(bilateral_smooth(noisy), bilateral_smooth(clean)) < 0.5 * rms(noisy, clean)
        assert np.array_equal(np.asarray(apply_color_constancy(Image.open(path).convert("RGB"),
                                                               "shades_of_gray_standardised_denoised")),
                              np.asarray(bilateral_smooth(clean)))
    step = np.full((20, 20, 3), 60, dtype=np.uint8)
    step[:, 10:] = 160
    smoothed = np.asarray(bilateral_smooth(Image.fromarray(step)), dtype=int)
    assert np.abs(smoothed - step).max() <= 1


def test_standardised_exposure_limits_the_contrast_gain_of_a_flat_image():
    flat = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    flat.putpixel((0, 0), (140, 140, 140))  # nearly no contrast: a gain of 1 / std would blow up noise
    out = np.asarray(apply_color_constancy(flat, "shades_of_gray_standardised"), dtype=float)
    assert np.ptp(out) <= 2 * 12 + 1


def test_prepare_image_resizes_then_applies_the_named_constancy(pil_image):
    assert prepare_image(pil_image, PRE).size == (97, 73)  # shorter side 90 -> 73
    assert prepare_image(pil_image, {**PRE, "color_constancy": "shades_of_gray"}).size == (97, 73)
    assert np.array_equal(np.asarray(prepare_image(pil_image, {**PRE, "color_constancy": "none"})),
                          np.asarray(prepare_image(pil_image, PRE)))
    with pytest.raises(ConfigError, match="colour constancy 'max-rgb'"):
        prepare_image(pil_image, {**PRE, "color_constancy": "max-rgb"})


def _fine_stripes(shorter_side: int) -> Image.Image:
    """Black and white stripes one pixel wide: detail that a reduction to a smaller size must blur."""
    stripes = np.tile((np.arange(shorter_side * 4 // 3) % 2 * 255).astype(np.uint8), (shorter_side, 1))
    return Image.fromarray(np.stack([stripes] * 3, axis=-1))


def test_detail_size_reduces_a_sharper_image_to_the_lowest_sources_detail():
    sharp = _fine_stripes(180)  # e.g. a 9-class copy next to a source stored at 150 px
    plain = np.asarray(prepare_image(sharp, PRE), dtype=np.float32)
    reduced = np.asarray(prepare_image(sharp, {**PRE, "detail_size": 40}), dtype=np.float32)
    assert reduced.shape == plain.shape == (73, 97, 3)  # same output size, less detail
    assert reduced.std() < plain.std()
    # the same picture stored at the detail size and upsampled gets the same pixels
    low = sharp.resize((53, 40), Image.BICUBIC)
    np.testing.assert_array_equal(reduced, np.asarray(prepare_image(low, PRE), dtype=np.float32))


def test_detail_size_leaves_images_at_or_below_it_alone(pil_image):
    for detail in (90, 200):  # shorter side 90: equal to, and below, the detail size
        assert np.array_equal(np.asarray(prepare_image(pil_image, {**PRE, "detail_size": detail})),
                              np.asarray(prepare_image(pil_image, PRE)))


def test_detail_size_is_validated():
    with pytest.raises(ConfigError, match="detail size must be at least 16 px, got 8"):
        TrainConfig(data="x", detail_size=8).validate()
