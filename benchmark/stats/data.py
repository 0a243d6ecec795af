"""Input tables of the statistics engine: integer-coded numpy arrays, never ORM rows.

A selector turns campaign rows into these once; everything downstream is array code. Every
constructor validates shapes, dtypes and ranges and raises a ``ValueError`` that names the field,
because a silently broadcast or out-of-range index would give a wrong number, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

__all__ = ["Faces", "LikertJudgments", "PairOutcome", "PairwiseJudgments"]


class PairOutcome(IntEnum):
    """How a pairwise judgment is coded (``outcome`` array of :class:`PairwiseJudgments`)."""

    LEFT = 0
    RIGHT = 1
    TIE = 2
    BOTH_BAD = 3


def _int_array(name: str, values: npt.ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _index_array(name: str, values: npt.ArrayLike, upper: int | None = None) -> np.ndarray:
    array = _int_array(name, values)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be >= 0, found {array.min()}")
    if upper is not None and array.size and array.max() >= upper:
        raise ValueError(f"{name} must be < {upper}, found {array.max()}")
    return array


def _same_length(**arrays: np.ndarray | None) -> int:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {lengths}")
    return next(iter(lengths.values()))


@dataclass(frozen=True)
class Faces:
    """Per-face facts: the prompt (bootstrap cluster), the image and the DM that drew it.

    ``prompt``, ``image`` and ``dm`` are integer codes ``0..P-1``, ``0..I-1``, ``0..K-1`` of
    length F. All faces of one image must share its prompt, since the bootstrap resamples prompts.
    """

    prompt: np.ndarray
    image: np.ndarray
    dm: np.ndarray

    def __init__(
        self, *, prompt: npt.ArrayLike, image: npt.ArrayLike, dm: npt.ArrayLike | None = None
    ) -> None:
        prompt_arr = _index_array("prompt", prompt)
        image_arr = _index_array("image", image)
        dm_arr = np.zeros(len(prompt_arr), np.int64) if dm is None else _index_array("dm", dm)
        _same_length(prompt=prompt_arr, image=image_arr, dm=dm_arr)
        if len(prompt_arr) == 0:
            raise ValueError("Faces needs at least one face")
        # One image, one prompt: otherwise resampling prompts would split an image.
        first_prompt = np.full(image_arr.max() + 1, -1)
        first_prompt[image_arr] = prompt_arr
        if np.any(first_prompt[image_arr] != prompt_arr):
            raise ValueError("all faces of one image must have the same prompt")
        object.__setattr__(self, "prompt", prompt_arr)
        object.__setattr__(self, "image", image_arr)
        object.__setattr__(self, "dm", dm_arr)

    @property
    def n_faces(self) -> int:
        return len(self.prompt)

    @property
    def n_prompts(self) -> int:
        return int(self.prompt.max()) + 1

    @property
    def n_images(self) -> int:
        return int(self.image.max()) + 1

    @property
    def n_dms(self) -> int:
        return int(self.dm.max()) + 1


@dataclass(frozen=True)
class LikertJudgments:
    """One row per likert judgment: which face, which annotator, what rating.

    ``gold`` (optional) holds the expected rating of gold items and NaN elsewhere.
    """

    face: np.ndarray
    annotator: np.ndarray
    rating: np.ndarray
    gold: np.ndarray | None = None

    def __init__(
        self,
        *,
        face: npt.ArrayLike,
        annotator: npt.ArrayLike,
        rating: npt.ArrayLike,
        gold: npt.ArrayLike | None = None,
    ) -> None:
        face_arr = _index_array("face", face)
        annotator_arr = _index_array("annotator", annotator)
        rating_arr = np.asarray(rating, dtype=np.float64)
        if rating_arr.ndim != 1:
            raise ValueError(f"rating must be one-dimensional, got shape {rating_arr.shape}")
        if not np.all(np.isfinite(rating_arr)):
            raise ValueError("rating must be finite (drop missing judgments instead of NaN)")
        gold_arr = None if gold is None else np.asarray(gold, dtype=np.float64)
        if gold_arr is not None and gold_arr.ndim != 1:
            raise ValueError(f"gold must be one-dimensional, got shape {gold_arr.shape}")
        _same_length(face=face_arr, annotator=annotator_arr, rating=rating_arr, gold=gold_arr)
        object.__setattr__(self, "face", face_arr)
        object.__setattr__(self, "annotator", annotator_arr)
        object.__setattr__(self, "rating", rating_arr)
        object.__setattr__(self, "gold", gold_arr)

    def __len__(self) -> int:
        return len(self.face)

    def check_against(self, faces: Faces) -> None:
        if len(self) and self.face.max() >= faces.n_faces:
            raise ValueError(f"likert face index {self.face.max()} >= n_faces {faces.n_faces}")


@dataclass(frozen=True)
class PairwiseJudgments:
    """One row per pairwise judgment between two faces of the same prompt.

    ``outcome`` is coded by :class:`PairOutcome`; ``gold`` (optional) holds the expected outcome
    of gold items and -1 elsewhere.
    """

    left_face: np.ndarray
    right_face: np.ndarray
    annotator: np.ndarray
    outcome: np.ndarray
    gold: np.ndarray | None = None

    def __init__(
        self,
        *,
        left_face: npt.ArrayLike,
        right_face: npt.ArrayLike,
        annotator: npt.ArrayLike,
        outcome: npt.ArrayLike,
        gold: npt.ArrayLike | None = None,
    ) -> None:
        left = _index_array("left_face", left_face)
        right = _index_array("right_face", right_face)
        annotator_arr = _index_array("annotator", annotator)
        outcome_arr = _index_array("outcome", outcome, upper=len(PairOutcome))
        gold_arr = None if gold is None else _int_array("gold", gold)
        if (
            gold_arr is not None
            and gold_arr.size
            and (gold_arr.min() < -1 or gold_arr.max() >= len(PairOutcome))
        ):
            raise ValueError("gold must be -1 (not gold) or a PairOutcome code")
        _same_length(
            left_face=left,
            right_face=right,
            annotator=annotator_arr,
            outcome=outcome_arr,
            gold=gold_arr,
        )
        if np.any(left == right):
            raise ValueError("a pairwise judgment must compare two different faces")
        object.__setattr__(self, "left_face", left)
        object.__setattr__(self, "right_face", right)
        object.__setattr__(self, "annotator", annotator_arr)
        object.__setattr__(self, "outcome", outcome_arr)
        object.__setattr__(self, "gold", gold_arr)

    def __len__(self) -> int:
        return len(self.left_face)

    def check_against(self, faces: Faces) -> None:
        if not len(self):
            return
        biggest = max(self.left_face.max(), self.right_face.max())
        if biggest >= faces.n_faces:
            raise ValueError(f"pairwise face index {biggest} >= n_faces {faces.n_faces}")
        if np.any(faces.prompt[self.left_face] != faces.prompt[self.right_face]):
            raise ValueError("pairwise judgments must compare faces of the same prompt")

    def human_label(self) -> np.ndarray:
        """+1 left better, -1 right better, 0 tie; both-bad counts as a tie (neither is better)."""
        label = np.zeros(len(self), np.int8)
        label[self.outcome == PairOutcome.LEFT] = 1
        label[self.outcome == PairOutcome.RIGHT] = -1
        return label
