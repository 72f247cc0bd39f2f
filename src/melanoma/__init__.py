"""melanoma: decision-support CNNs that flag dermoscopic lesions needing a second look."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy exports (PEP 562): `melanoma.Predictor` imports torch only when first used."""
    if name in ("Predictor", "Prediction", "PredictionResult"):
        from melanoma import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'melanoma' has no attribute {name!r}")
