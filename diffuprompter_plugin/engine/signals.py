"""Quality signals of an instance: how far to trust a pseudo-label, from
what the run computed anyway (no extra U-Net or SAM call).

Each instance carries five signals and one combined score:

- ``sam_iou``: SAM's predicted IoU (``iou_predictions``) of the chosen
  candidate, clipped to [0, 1].
- ``region_iou``: the IoU between the chosen SAM mask and the binarised
  DenseCRF region that prompted it, the paper's selection criterion
  (:func:`~.segmentation.select_candidates`); low when SAM drew something
  other than what the attention found.
- ``stability``: SAM's stability score of the chosen mask, as
  segment-anything's automatic mask generator computes it
  (``calculate_stability_score``): the IoU of the candidate's
  full-resolution logits thresholded at ``mask_threshold + 1`` and
  ``mask_threshold - 1``.
- ``heat_contrast``: the mean heatmap inside the mask minus the mean heatmap
  in a ring around it (:func:`heat_contrast`), in [-1, 1].
- ``draw_agreement``: how consistently the L noise draws of LSAD (Eq. 9)
  put the class on the instance (:func:`draw_agreement`): one minus the
  draws' spread inside the mask relative to the heat there, in [0, 1];
  exactly 1 when every draw gives the same map.
- ``quality``: the geometric mean of the five, each in [0, 1]
  (:attr:`Signals.quality`).

An instance made of several regions' masks (SAM's masks touching) takes
``sam_iou``, ``region_iou`` and ``stability`` from the region whose
candidate SAM predicts best, the same region whose predicted IoU the
instance's ``score`` (mean heat x SAM's IoU) has always used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

STABILITY_OFFSET = 1.0
"""Offset of the two logit thresholds of ``stability``: segment-anything's
automatic mask generator's ``stability_score_offset``."""

RING_FRACTION = 0.25
"""The ring of ``heat_contrast`` is this fraction of the instance's side
(the square root of its area) wide ..."""

RING_MIN = 2
"""... and at least this many pixels."""


class Signals(NamedTuple):
    """The quality signals of one instance (see the module's formulas).

    Attributes:
        draw_agreement: None when the draws' spread is unknown (a run stored
            before the signals existed, re-thresholded).
    """

    sam_iou: float
    region_iou: float
    stability: float
    heat_contrast: float
    draw_agreement: float | None

    @property
    def quality(self) -> float:
        """The geometric mean of the signals in [0, 1]: ``sam_iou``,
        ``region_iou``, ``stability``, ``max(heat_contrast, 0)`` and
        ``draw_agreement`` (left out when None).

        Why a geometric mean: a pseudo-label is wrong when any one piece of
        evidence fails (SAM unsure or unstable, SAM's mask not the attended
        region, no heat above the surroundings, draws that disagree), and a
        zero in any of them makes the mean zero, as the minimum would. Unlike
        the minimum, it ranks by every signal, not by the one that is
        typically lowest (heat contrast, as heatmaps are blurred): scaling
        one signal by a constant scales quality by a constant power of it
        and leaves the order of labels unchanged, so no signal's typical
        level decides the order alone.
        """
        terms = [self.sam_iou, self.region_iou, self.stability, max(self.heat_contrast, 0.0)]
        if self.draw_agreement is not None:
            terms.append(self.draw_agreement)
        terms = [min(max(t, 0.0), 1.0) for t in terms]
        return math.prod(terms) ** (1 / len(terms))

    def attributes(self) -> dict[str, float]:
        """The attributes stored on a label: the signals and ``quality``
        (``draw_agreement`` only when known)."""
        values = {k: v for k, v in self._asdict().items() if v is not None}
        return {**{k: float(v) for k, v in values.items()}, "quality": self.quality}


def stability_scores(logits: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """SAM's stability score of each mask, as its automatic mask generator
    computes it (``segment_anything.utils.amg.calculate_stability_score``
    with offset :data:`STABILITY_OFFSET`).

    Args:
        logits: (R, H, W) mask logits as ``predict_torch`` returns them
            with ``return_logits=True``.
        mask_threshold: the model's ``mask_threshold``.

    Returns:
        (R,) float in [0, 1].
    """
    from segment_anything.utils.amg import calculate_stability_score

    return calculate_stability_score(logits, mask_threshold, STABILITY_OFFSET).float()


def ring_width(area: int) -> int:
    """Width of the ring of :func:`heat_contrast`, px: :data:`RING_FRACTION`
    of ``sqrt(area)``, at least :data:`RING_MIN`."""
    return max(RING_MIN, round(RING_FRACTION * math.sqrt(area)))


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """The mask's box grown by ``pad`` px, inside the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    height, width = mask.shape
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, height)),
        slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, width)),
    )


def heat_contrast(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Mean ``heatmap`` inside ``mask`` minus its mean in the ring around it:
    the pixels outside the mask within :func:`ring_width` px of it
    (chessboard distance, a square dilation), inside the image. A mask with
    no pixel around it (it fills the image) is contrasted with 0, the
    heatmap's floor.

    Args:
        heatmap: H x W float in [0, 1].
        mask: H x W bool, not empty.

    Returns:
        a float in [-1, 1].
    """
    r = ring_width(int(mask.sum()))
    window = _box(mask, r)
    inside = mask[window]
    grown = cv2.dilate(inside.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8))
    ring = grown.astype(bool) & ~inside
    heat = heatmap[window]
    around = float(heat[ring].mean()) if ring.any() else 0.0
    return float(heat[inside].mean()) - around


def draw_agreement(heatmap: np.ndarray, spread: np.ndarray, mask: np.ndarray) -> float:
    """One minus the draws' relative spread inside ``mask``:
    ``1 - min(1, mean(spread) / mean(heatmap))`` over the mask's pixels.

    ``spread`` is the standard deviation of the L per-draw maps of Eq. 9 in
    the heatmap's own units (see :meth:`~.grounding.DrawMoments.spread`),
    so the ratio is the draws' coefficient of variation on the heat they
    put on the instance above the map's floor. 1 when every draw gives the
    same map (no spread), lower as the draws disagree, 0 when the spread is
    as large as the heat itself.

    Args:
        heatmap, spread: H x W float in [0, 1].
        mask: H x W bool, not empty.
    """
    spread_mean = float(spread[mask].mean())
    if spread_mean == 0:
        return 1.0
    heat_mean = float(heatmap[mask].mean())
    return 1.0 - min(1.0, spread_mean / heat_mean) if heat_mean > 0 else 0.0


def merged_signals(parts: Sequence[tuple[Signals | None, int]]) -> Signals | None:
    """The signals of an object merged across tile seams: each signal is the
    area-weighted mean of its parts' (each tile saw part of the object, and
    the part with more pixels speaks for more of the mask); ``quality``
    follows from the merged signals. A signal that some parts lack is the
    mean over the parts that have it; None when no part has signals.

    Args:
        parts: (signals, area in px) of each tile's part.
    """
    known = [(s, a) for s, a in parts if s is not None]
    if not known:
        return None
    merged = []
    for k in range(len(Signals._fields)):
        values = [(s[k], a) for s, a in known if s[k] is not None]
        total = sum(a for _, a in values)
        merged.append(sum(v * a for v, a in values) / total if values else None)
    return Signals(*merged)
