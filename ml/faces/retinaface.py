"""RetinaFace (mobilenet0.25 or ResNet-50 backbone): the face detector of the official FaceScore.

The network keeps the parameter names of the public Pytorch_Retinaface / batch-face checkpoints
(``mobilenet0.25_Final.pth``, ``Resnet50_Final.pth``), so strict ``load_state_dict`` is the whole
loader. Steps of :meth:`RetinaFaceDetector.detect`:

1. Check every image (RGB uint8 HxWx3); optionally downscale so the long side is at most
   ``max_size`` (bilinear, as batch-face's ``resize``).
2. Group images of equal size and run each group in batches of ``batch_size``. Grouping instead
   of padding keeps batched results equal to one-at-a-time: a padded border would leak into the
   convolutions near the image edge.
3. On the device: RGB → BGR, subtract the BGR mean (104, 117, 123) — the upstream network was
   trained on ``cv2.imread`` (BGR) images, and FaceScore feeds it ``cv2.imread`` output with
   ``cv=False`` — then the forward pass under autocast (fp16 on CUDA like batch-face's ``fp16``,
   fp32 on the CPU); heads are cast back to fp32 before softmax and decoding.
4. Prior boxes for the input size (per pyramid level, row-major over the feature map, then per
   anchor size — the order of the heads' outputs), box and 5-landmark decoding with the
   variances (0.1, 0.2), scaled to pixels and divided by the resize factor.
5. Per image: keep faces with confidence ≥ ``threshold`` (0.9, FaceScore's rule), the ``top_k``
   best, greedy NMS at IoU 0.4 with upstream's "+1 pixel" box areas, the ``keep_top_k`` best.
6. Boxes are clipped to the image (landmarks are not), most confident first.

Filtering at the threshold before NMS gives the same faces as upstream's NMS at 0.5 followed by
FaceScore's ≥ 0.9 filter: a box is only ever suppressed by a more confident one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.devices import autocast, resolve_device, resolve_dtype
from ml.faces import Detection, check_image, register_detector
from ml.metrics.base import CheckpointMismatch, MetricUnavailable
from ml.metrics.checkpoints import load_strict, read_state_dict
from ml.weights import locate, resolve_weights_dir, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGS",
    "DetectorUnavailable",
    "MOBILENET",
    "RESNET50",
    "RawDetections",
    "RetinaFace",
    "RetinaFaceConfig",
    "RetinaFaceDetector",
    "create_retinaface",
    "decode_boxes",
    "decode_landmarks",
    "load_retinaface",
    "nms_keep",
    "prior_boxes",
]

BGR_MEAN = (104.0, 117.0, 123.0)


@dataclass(frozen=True)
class RetinaFaceConfig:
    """Architecture and anchors of one upstream model (``cfg_mnet`` / ``cfg_re50`` upstream)."""

    name: str  # the registry name
    backbone: Literal["mobilenet0.25", "resnet50"]
    weights_file: str  # relative to the weights dir
    in_channel: int  # the backbone's three outputs have 2×, 4× and 8× this many channels
    out_channel: int
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    steps: tuple[int, ...] = (8, 16, 32)
    variance: tuple[float, float] = (0.1, 0.2)
    clip: bool = False

    @property
    def anchors_per_cell(self) -> int:
        counts = {len(sizes) for sizes in self.min_sizes}
        if len(counts) != 1:
            raise ValueError("every pyramid level must have the same number of anchor sizes")
        return counts.pop()


MOBILENET = RetinaFaceConfig(
    name="retinaface_mobilenet",
    backbone="mobilenet0.25",
    weights_file="RetinaFace/mobilenet0.25_Final.pth",
    in_channel=32,
    out_channel=64,
)
RESNET50 = RetinaFaceConfig(
    name="retinaface_resnet50",
    backbone="resnet50",
    weights_file="RetinaFace/Resnet50_Final.pth",
    in_channel=256,
    out_channel=256,
)
CONFIGS = {config.name: config for config in (MOBILENET, RESNET50)}


class DetectorUnavailable(MetricUnavailable):
    """A detector's weight file is missing (a `MetricUnavailable`, so one handler serves both)."""

    def __init__(self, detector: str, missing: Sequence[Path], weights_dir: Path) -> None:
        super().__init__(detector, missing, weights_dir)
        listed = "\n".join(f"  - {path}" for path in self.missing)
        self.args = (
            f"face detector {detector!r} is unavailable: {len(self.missing)} file(s) missing "
            f"under weights dir {weights_dir} (set FACEBENCH_WEIGHTS_DIR or pass weights_dir=; "
            f"nothing is downloaded):\n{listed}",
        )


# --- the network, in the upstream parameter layout ---------------------------------------------


def _conv_bn(
    cin: int,
    cout: int,
    *,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    leaky: float | None,
) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm (+ LeakyReLU unless ``leaky`` is None); slope 0 is a ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if leaky is not None:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return layers


def _block(cin: int, cout: int, *, stride: int = 1, leaky: float) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(cin, cout, stride=stride, leaky=leaky))


def _depthwise_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    # Upstream `conv_dw`: one Sequential of six layers, so its weights sit at indices 0, 1, 3, 4.
    return nn.Sequential(
        *_conv_bn(cin, cin, stride=stride, groups=cin, leaky=0.1),
        *_conv_bn(cin, cout, kernel=1, leaky=0.1),
    )


class MobileNetV1Body(nn.Module):
    """MobileNet-V1 ×0.25 up to its three stages (``body.stage{1,2,3}``): strides 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            _block(3, 8, stride=2, leaky=0.1),
            _depthwise_separable(8, 16, 1),
            _depthwise_separable(16, 32, 2),
            _depthwise_separable(32, 32, 1),
            _depthwise_separable(32, 64, 2),
            _depthwise_separable(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            _depthwise_separable(64, 128, 2),
            *(_depthwise_separable(128, 128, 1) for _ in range(5)),
        )
        self.stage3 = nn.Sequential(
            _depthwise_separable(128, 256, 2),
            _depthwise_separable(256, 256, 1),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        return [c1, c2, self.stage3(c2)]


class ResNet50Body(nn.Module):
    """torchvision's ResNet-50 without its pooling and classifier, as upstream's
    ``IntermediateLayerGetter`` keeps it (``body.conv1``, ``body.bn1``, ``body.layer1…4``)."""

    def __init__(self) -> None:
        super().__init__()
        # Imported here so that the haar default never depends on torchvision importing.
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c2 = self.layer2(x)
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        # Upstream's rule: the narrow (mobilenet) model uses leaky ReLUs, the wide one ReLUs.
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = nn.Sequential(*_conv_bn(in_channels[0], out_channels, kernel=1, leaky=leaky))
        self.output2 = nn.Sequential(*_conv_bn(in_channels[1], out_channels, kernel=1, leaky=leaky))
        self.output3 = nn.Sequential(*_conv_bn(in_channels[2], out_channels, kernel=1, leaky=leaky))
        self.merge1 = _block(out_channels, out_channels, leaky=leaky)
        self.merge2 = _block(out_channels, out_channels, leaky=leaky)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out1 = self.output1(features[0])
        out2 = self.output2(features[1])
        out3 = self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[-2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[-2:], mode="nearest"))
        return [out1, out2, out3]


class SSH(nn.Module):
    """Context module: 3×3, 5×5 (two 3×3) and 7×7 (three 3×3) branches, concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH needs a multiple of 4 channels, got {out_channels}")
        leaky = 0.1 if out_channels <= 64 else 0.0
        quarter = out_channels // 4
        self.conv3X3 = nn.Sequential(*_conv_bn(in_channels, out_channels // 2, leaky=None))
        self.conv5X5_1 = _block(in_channels, quarter, leaky=leaky)
        self.conv5X5_2 = nn.Sequential(*_conv_bn(quarter, quarter, leaky=None))
        self.conv7X7_2 = _block(quarter, quarter, leaky=leaky)
        self.conv7x7_3 = nn.Sequential(*_conv_bn(quarter, quarter, leaky=None))  # sic: lower x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5_1 = self.conv5X5_1(x)
        return F.relu(
            torch.cat(
                [
                    self.conv3X3(x),
                    self.conv5X5_2(branch5_1),
                    self.conv7x7_3(self.conv7X7_2(branch5_1)),
                ],
                dim=1,
            )
        )


class _Head(nn.Module):
    """A 1×1 conv predicting ``values`` numbers per anchor, flattened to (B, H·W·anchors, values)."""

    def __init__(self, in_channels: int, anchors: int, values: int) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """Backbone → FPN → SSH per level → class / box / landmark heads per level."""

    def __init__(self, config: RetinaFaceConfig) -> None:
        super().__init__()
        self.config = config
        self.body: nn.Module = (
            MobileNetV1Body() if config.backbone == "mobilenet0.25" else ResNet50Body()
        )
        stage = config.in_channel
        out = config.out_channel
        anchors = config.anchors_per_cell
        self.fpn = FPN((stage * 2, stage * 4, stage * 8), out)
        self.ssh1 = SSH(out, out)
        self.ssh2 = SSH(out, out)
        self.ssh3 = SSH(out, out)
        self.ClassHead = nn.ModuleList(_Head(out, anchors, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out, anchors, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out, anchors, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box offsets (B, N, 4), face probability (B, N) and landmark offsets (B, N, 10), fp32."""
        pyramid = self.fpn(self.body(x))
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]

        def run(heads: nn.ModuleList) -> torch.Tensor:
            # fp32 before softmax and exp: half precision would move boxes and scores.
            return torch.cat([head(f) for head, f in zip(heads, features, strict=True)], 1).float()

        logits = run(self.ClassHead)
        return run(self.BboxHead), logits.softmax(dim=-1)[..., 1], run(self.LandmarkHead)


# --- checkpoints -----------------------------------------------------------------------------


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Checkpoints saved from nn.DataParallel (upstream's multi-GPU ResNet-50 run) carry `module.`.
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


def read_retinaface_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, from a bare state dict or upstream's ``{"state_dict": …}``."""
    try:
        state = read_state_dict(path)
    except CheckpointMismatch as plain_error:
        if "truncated or corrupt" in str(plain_error):
            raise
        state = read_state_dict(path, subkey="state_dict")
    return _strip_module_prefix(state)


def load_retinaface(
    config: RetinaFaceConfig, path: Path, *, device: torch.device | None = None
) -> RetinaFace:
    """Build the network and load ``path`` strictly (every key, no extra key, every shape)."""
    state = read_retinaface_state_dict(path)
    with torch.device("meta"):
        model = RetinaFace(config)
    load_strict(model, state, source=path, assign=True)
    # assign=True keeps the checkpoint's dtype; the policy is fp32 weights + autocast.
    model.float().eval().requires_grad_(False)
    return model.to(device or torch.device("cpu"))


# --- anchors, decoding, NMS ------------------------------------------------------------------


def prior_boxes(config: RetinaFaceConfig, height: int, width: int) -> torch.Tensor:
    """(N, 4) float32 priors (cx, cy, w, h) as fractions of the input, in the heads' order:
    per level, row-major over its ceil(H/step)×ceil(W/step) map, then per anchor size.

    Computed in float64 with upstream's operation order, then rounded once, as upstream does.
    """
    levels = []
    for sizes, step in zip(config.min_sizes, config.steps, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        anchor_sizes = np.asarray(sizes, dtype=np.float64)
        level = np.empty((rows, cols, len(sizes), 4), dtype=np.float64)
        level[..., 0] = ((np.arange(cols) + 0.5) * step / width)[None, :, None]
        level[..., 1] = ((np.arange(rows) + 0.5) * step / height)[:, None, None]
        level[..., 2] = anchor_sizes / width
        level[..., 3] = anchor_sizes / height
        levels.append(level.reshape(-1, 4))
    priors = torch.from_numpy(np.concatenate(levels)).float()
    if config.clip:
        priors.clamp_(min=0.0, max=1.0)
    return priors


def decode_boxes(
    offsets: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]
) -> torch.Tensor:
    """(…, N, 4) offsets → (x0, y0, x1, y1) fractions: the SSD encoding, inverted."""
    centers = priors[..., :2] + offsets[..., :2] * variance[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(offsets[..., 2:] * variance[1])
    top_left = centers - sizes / 2
    return torch.cat((top_left, sizes + top_left), dim=-1)


def decode_landmarks(
    offsets: torch.Tensor, priors: torch.Tensor, variance: tuple[float, float]
) -> torch.Tensor:
    """(…, N, 10) offsets → five (x, y) points as fractions, flattened like the input."""
    points = offsets.unflatten(-1, (5, 2)) * variance[0] * priors[..., None, 2:]
    return (priors[..., None, :2] + points).flatten(-2)


def nms_keep(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by greedy NMS, most confident first, with upstream's IoU convention.

    Upstream (``py_cpu_nms``) measures boxes in whole-pixel counts, ``x1 - x0 + 1``; growing the
    far corner by one pixel gives torchvision's IoU exactly that convention.
    """
    from torchvision.ops import nms

    grown = torch.cat((boxes[:, :2], boxes[:, 2:] + 1), dim=1)
    return nms(grown, scores, iou_threshold)


# --- the detector ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RawDetections:
    """One image's faces before clipping, in input pixels: boxes (n, 4), scores (n,),
    landmarks (n, 5, 2), most confident first (what upstream's ``batch_detect`` returns)."""

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray


class RetinaFaceDetector:
    """A loaded RetinaFace behind the batched :class:`ml.faces.FaceDetector` interface.

    ``threshold`` (face probability kept, ≥), ``nms_threshold``, ``top_k`` / ``keep_top_k`` (boxes
    before / after NMS) are upstream's settings with FaceScore's threshold; ``max_size`` caps the
    long side the network sees (None: full resolution, as FaceScore runs it; unlike batch-face's
    ``max_size`` it never upscales); ``batch_size`` bounds images per forward pass.
    """

    def __init__(
        self,
        model: RetinaFace,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        threshold: float = 0.9,
        nms_threshold: float = 0.4,
        top_k: int = 5000,
        keep_top_k: int = 750,
        max_size: int | None = None,
        batch_size: int = 16,
        weights_sha256: str = "",
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is outside [0, 1]")
        if max_size is not None and max_size < 32:
            raise ValueError(f"max_size {max_size} is below the coarsest stride (32 px)")
        if batch_size < 1 or top_k < 1 or keep_top_k < 1:
            raise ValueError("batch_size, top_k and keep_top_k must be positive")
        self.config = model.config
        self.name = name or model.config.name
        self.device = resolve_device(device)
        # fp16 rather than bf16 on CUDA: batch-face's half mode, and 3 more mantissa bits for
        # scores compared against a 0.9 threshold.
        self.dtype = resolve_dtype(self.device, dtype, cuda_default=torch.float16)
        self.model = model.to(self.device).eval()
        self.threshold = threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.max_size = max_size
        self.batch_size = batch_size
        self.weights_sha256 = weights_sha256
        self._priors: dict[tuple[int, int], torch.Tensor] = {}
        self._mean = torch.tensor(BGR_MEAN, device=self.device).view(1, 3, 1, 1)

    @property
    def settings(self) -> dict[str, Any]:
        """What changes detections besides the image: for a metric version's settings."""
        return {
            "detector": self.name,
            "weights_sha256": self.weights_sha256,
            "threshold": self.threshold,
            "nms_threshold": self.nms_threshold,
            "top_k": self.top_k,
            "keep_top_k": self.keep_top_k,
            "max_size": self.max_size,
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces of each RGB uint8 HxWx3 image, most confident first, boxes clipped to it."""
        results = []
        for image, raw in zip(images, self.detect_raw(images), strict=True):
            height, width = image.shape[:2]
            faces = []
            for box, score, points in zip(raw.boxes, raw.scores, raw.landmarks, strict=True):
                x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
                x1, y1 = min(float(width), float(box[2])), min(float(height), float(box[3]))
                if x1 <= x0 or y1 <= y0:  # entirely outside the image, or degenerate
                    continue
                landmarks = [(float(x), float(y)) for x, y in points]
                faces.append(Detection(x0, y0, x1, y1, float(score), landmarks=landmarks))
            faces.sort(key=lambda d: (-d.confidence, d.y0, d.x0, d.y1, d.x1))
            results.append(faces)
        return results

    def detect_raw(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Upstream's unclipped detections per image, in input order."""
        for image in images:
            check_image(image)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((image.shape[0], image.shape[1]), []).append(index)
        results: list[RawDetections | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                for index, found in zip(
                    chunk, self._detect_same_size([images[i] for i in chunk]), strict=True
                ):
                    results[index] = found
        return [found for found in results if found is not None]

    def _resize_factor(self, height: int, width: int) -> float:
        long_side = max(height, width)
        if self.max_size is None or long_side <= self.max_size:
            return 1.0
        return self.max_size / long_side

    def _priors_for(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            if len(self._priors) >= 32:  # generated images come in few sizes; bound it anyway
                self._priors.clear()
            self._priors[key] = prior_boxes(self.config, height, width).to(self.device)
        return self._priors[key]

    @torch.inference_mode()
    def _detect_same_size(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        height, width = images[0].shape[:2]
        resize = self._resize_factor(height, width)
        pixels = torch.from_numpy(np.stack(images)).to(self.device)
        batch = pixels.permute(0, 3, 1, 2).flip(1).float()  # RGB → BGR, as the model was trained
        if resize != 1.0:
            size = (max(1, int(height * resize)), max(1, int(width * resize)))
            batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False)
        batch = batch - self._mean
        in_height, in_width = batch.shape[-2:]

        with autocast(self.device, self.dtype):
            offsets, scores, landmark_offsets = self.model(batch)
        priors = self._priors_for(in_height, in_width)
        if priors.shape[0] != offsets.shape[1]:
            raise RuntimeError(
                f"{priors.shape[0]} priors for a {in_width}x{in_height} input but the network "
                f"predicted {offsets.shape[1]}"
            )
        box_scale = torch.tensor([in_width, in_height] * 2, device=self.device)
        point_scale = torch.tensor([in_width, in_height] * 5, device=self.device)
        boxes = decode_boxes(offsets, priors, self.config.variance) * box_scale / resize
        points = (
            decode_landmarks(landmark_offsets, priors, self.config.variance) * point_scale / resize
        )
        return [self._select(boxes[i], scores[i], points[i]) for i in range(batch.shape[0])]

    def _select(
        self, boxes: torch.Tensor, scores: torch.Tensor, points: torch.Tensor
    ) -> RawDetections:
        confident = torch.nonzero(scores >= self.threshold).squeeze(1)
        order = scores[confident].argsort(descending=True, stable=True)[: self.top_k]
        candidates = confident[order]
        kept = candidates[nms_keep(boxes[candidates], scores[candidates], self.nms_threshold)]
        kept = kept[: self.keep_top_k]
        return RawDetections(
            boxes=boxes[kept].cpu().numpy(),
            scores=scores[kept].cpu().numpy(),
            landmarks=points[kept].reshape(-1, 5, 2).cpu().numpy(),
        )


def create_retinaface(
    name: str,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **settings: Any,
) -> RetinaFaceDetector:
    """The detector registered as ``name``, from ``<weights_dir>/RetinaFace/…``; never downloads."""
    config = CONFIGS[name]
    root = resolve_weights_dir(weights_dir)
    path = locate(config.weights_file, root)
    if path is None:
        raise DetectorUnavailable(name, [root / config.weights_file], root)
    model = load_retinaface(config, path)
    detector = RetinaFaceDetector(
        model,
        device=device,
        dtype=dtype,
        weights_sha256=sha256_file(path, cache_dir=root),
        **settings,
    )
    logger.info("loaded %s from %s on %s (%s)", name, path, detector.device, str(detector.dtype))
    return detector


@register_detector("retinaface_mobilenet")
def create_retinaface_mobilenet(**kwargs: Any) -> RetinaFaceDetector:
    return create_retinaface("retinaface_mobilenet", **kwargs)


@register_detector("retinaface_resnet50")
def create_retinaface_resnet50(**kwargs: Any) -> RetinaFaceDetector:
    return create_retinaface("retinaface_resnet50", **kwargs)
