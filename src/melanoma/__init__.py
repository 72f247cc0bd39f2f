"""melanoma: decision-support CNNs that flag dermoscopic lesions needing a second look."""

__version__ = "0.1.0"
