"""Face detectors behind one batched interface and a registry.

    detector = create_detector("haar")
    faces_per_image = detector.detect([rgb_uint8_hxwx3, ...])

A detector is anything with a ``name`` and a batched ``detect``. New detectors (RetinaFace when
its weights are present) register a factory with :func:`register_detector`; callers only ever
name them, like open_clip's ``create_model``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Detection",
    "FaceDetector",
    "UnknownDetectorError",
    "create_detector",
    "list_detectors",
    "register_detector",
]


@dataclass(frozen=True)
class Detection:
    """One face in one image, in pixels of that image (x0, y0 inclusive; x1, y1 exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    confidence: float  # in [0, 1], higher is more certain; comparable within one detector only
    landmarks: list[tuple[float, float]] | None = None  # eyes, nose, mouth corners when known

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty face box {self.box}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is outside [0, 1]")
        if self.landmarks is not None and len(self.landmarks) != 5:
            raise ValueError(f"expected 5 landmarks, got {len(self.landmarks)}")

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


@runtime_checkable
class FaceDetector(Protocol):
    name: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces of each RGB uint8 HxWx3 image, most confident first."""
        ...


DetectorFactory = Callable[..., FaceDetector]
_FACTORIES: dict[str, DetectorFactory] = {}


class UnknownDetectorError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole sentence
        return str(self.args[0])


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    """Decorator: make ``create_detector(name, **kwargs)`` call this factory."""

    def decorator(factory: DetectorFactory) -> DetectorFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"a face detector named {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorator


def list_detectors() -> list[str]:
    return sorted(_FACTORIES)


def create_detector(name: str, **kwargs: Any) -> FaceDetector:
    """Build the detector registered under ``name``; unknown names list the known ones."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(list_detectors()) or "none"
        raise UnknownDetectorError(
            f"unknown face detector {name!r}; known detectors: {known}"
        ) from None
    return factory(**kwargs)


def check_image(image: np.ndarray) -> None:
    """Refuse anything but an RGB uint8 HxWx3 array, the one input format of every detector."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("face detectors take RGB uint8 numpy arrays")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")


# Built-in detectors register themselves on import.
from ml.faces import haar as _haar  # noqa: E402,F401
from ml.faces import retinaface as _retinaface  # noqa: E402,F401
