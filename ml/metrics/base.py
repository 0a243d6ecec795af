"""The one interface every metric implements, its inputs and its errors."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

from PIL import Image

if TYPE_CHECKING:
    import torch

Level = Literal["image", "face"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be built here: its weight files are missing (nothing is ever downloaded)."""

    def __init__(self, metric: str, missing: Sequence[Path], weights_dir: Path) -> None:
        self.metric = metric
        self.missing = list(missing)
        self.weights_dir = weights_dir
        listed = "\n".join(f"  - {path}" for path in self.missing)
        super().__init__(
            f"metric {metric!r} is unavailable: {len(self.missing)} file(s) missing under "
            f"weights dir {weights_dir} (set FACEBENCH_WEIGHTS_DIR or pass weights_dir=; hub "
            f"files are also looked up, never fetched, in the Hugging Face cache):\n{listed}"
        )


class CheckpointMismatch(RuntimeError):
    """A checkpoint does not fit the architecture (keys or shapes), or cannot be read at all."""


@dataclass(frozen=True)
class FaceCrop:
    """A face-level input: the crop, and what the detector said about it when that is known."""

    image: Image.Image
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in the source image
    confidence: float | None = None


PromptedImage: TypeAlias = tuple[Image.Image, str]
MetricInput: TypeAlias = Image.Image | PromptedImage | FaceCrop


class Metric(abc.ABC):
    """A loaded metric. `score` is batched and returns one float32 value per input, on the CPU.

    Image-level, prompt-conditioned metrics take `(image, prompt)` pairs; image-level metrics
    without a prompt take images (a pair's prompt is ignored); face-level metrics take face crops
    (`PIL.Image` or `FaceCrop`).
    """

    name: str
    level: Level
    higher_is_better: bool = True
    needs_prompt: bool = False
    # Bump when a change in code (preprocessing, formula) changes the scores of the same weights.
    code_version: str = "1"
    required_files: tuple[str, ...] = ()
    # sha256 of the main checkpoint, "" for weight-free metrics.
    weights_sha256: str = ""

    @property
    def version(self) -> str:
        if self.weights_sha256:
            return f"{self.name}-code{self.code_version}-sha256:{self.weights_sha256[:16]}"
        return f"{self.name}-code{self.code_version}"

    @abc.abstractmethod
    def score(self, batch: Sequence[MetricInput]) -> torch.Tensor:
        """One float32 value per input, in input order."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.version} level={self.level}>"


def cat_scores(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """The per-batch score tensors of one ``score`` call as one float32 tensor (empty for none)."""
    import torch  # this module stays importable without torch (listing metrics and weights)

    return torch.cat(list(parts)) if parts else torch.empty(0, dtype=torch.float32)


def split_prompted(
    batch: Sequence[MetricInput], metric: str
) -> tuple[list[Image.Image], list[str]]:
    """Images and prompts of a batch of `(image, prompt)` pairs; anything else is a caller bug."""
    images: list[Image.Image] = []
    prompts: list[str] = []
    for position, item in enumerate(batch):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
            raise TypeError(
                f"{metric} scores (PIL image, prompt) pairs; input {position} is {type(item).__name__}"
            )
        images.append(_as_image(item[0], metric, position))
        prompts.append(item[1])
    return images, prompts


def images_of(batch: Sequence[MetricInput], metric: str) -> list[Image.Image]:
    """The images of a batch of images, `(image, prompt)` pairs or face crops."""
    images = []
    for position, item in enumerate(batch):
        if isinstance(item, tuple):
            item = item[0]
        elif isinstance(item, FaceCrop):
            item = item.image
        images.append(_as_image(item, metric, position))
    return images


def face_crops_of(batch: Sequence[MetricInput], metric: str) -> list[FaceCrop]:
    crops = []
    for position, item in enumerate(batch):
        if isinstance(item, Image.Image):
            item = FaceCrop(image=item)
        if not isinstance(item, FaceCrop):
            raise TypeError(
                f"{metric} scores face crops; input {position} is {type(item).__name__}"
            )
        crops.append(item)
    return crops


def _as_image(item: object, metric: str, position: int) -> Image.Image:
    if not isinstance(item, Image.Image):
        raise TypeError(f"{metric}: input {position} is {type(item).__name__}, not a PIL image")
    return item
