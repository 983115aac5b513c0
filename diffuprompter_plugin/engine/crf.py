"""Binarisation of a heatmap at threshold gamma and DenseCRF refinement (Eq. 10)."""

from __future__ import annotations

import cv2
import numpy as np

from .config import DiffuPrompterConfig

CLIP = 1e-5

CRF_MAX_PIXELS = 1024 * 1024
"""DenseCRF runs at most at this many pixels (about 1.3 GB): a larger map is
refined at a reduced size and its foreground probability upsampled, since
DenseCRF's memory grows with the pixel count (4.9 GB at 2000 x 2000) and it
aborts the process, uncatchably, when allocation fails. Large scenes are
refined tile by tile, so this only caps a large ``tile_size``."""


def binarize(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """``[gamma; A]_argmax``: foreground where the heatmap exceeds gamma."""
    return heatmap > threshold


def foreground_probability(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """Eq. 10's two scores, ``gamma`` (background) and ``A`` (foreground),
    normalised to probabilities: ``A / (A + gamma)``. Its argmax is
    :func:`binarize`, so the CRF starts from the thresholded map."""
    return heatmap / (heatmap + threshold)


def dense_crf(
    rgb: np.ndarray, heatmap: np.ndarray, threshold: float, config: DiffuPrompterConfig
) -> np.ndarray:
    """Refines the binarised heatmap with a fully connected CRF.

    Unary: ``-log`` of :func:`foreground_probability`. Pairwise: a Gaussian
    smoothness kernel and a bilateral appearance kernel on the RGB image, with
    the config's ``crf_*`` settings (defaults from the pydensecrf README).

    Maps over :data:`CRF_MAX_PIXELS` are refined at that size (image and
    heatmap area-averaged) and the refined foreground probability is
    upsampled bilinearly.

    Returns:
        H x W bool mask.
    """
    height, width = heatmap.shape
    scale = (CRF_MAX_PIXELS / (height * width)) ** 0.5
    if scale >= 1:
        q = _mean_field(rgb, heatmap, threshold, config)
    else:
        size = (max(1, int(width * scale)), max(1, int(height * scale)))
        small_rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        small_heat = cv2.resize(heatmap.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        q_small = _mean_field(small_rgb, small_heat, threshold, config)
        q = np.stack(
            [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in q_small]
        )
    return q[1] > q[0]


def _mean_field(
    rgb: np.ndarray, heatmap: np.ndarray, threshold: float, config: DiffuPrompterConfig
) -> np.ndarray:
    """DenseCRF's (2, H, W) float32 marginals (background, foreground)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = heatmap.shape
    fg = foreground_probability(heatmap.astype(np.float32), threshold)
    probs = np.stack([1 - fg, fg]).astype(np.float32)
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=CLIP)))
    crf.addPairwiseGaussian(sxy=config.crf_gaussian_sxy, compat=config.crf_gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=config.crf_bilateral_sxy,
        srgb=config.crf_bilateral_srgb,
        rgbim=np.ascontiguousarray(rgb),
        compat=config.crf_bilateral_compat,
    )
    return np.asarray(crf.inference(config.crf_iterations), np.float32).reshape(2, height, width)


def has_foreground(heatmap: np.ndarray, threshold: float) -> bool:
    """Whether some pixel of the heatmap exceeds gamma."""
    return bool(heatmap.max(initial=0) > threshold)


def binary_map(
    rgb: np.ndarray, heatmap: np.ndarray, threshold: float, config: DiffuPrompterConfig
) -> np.ndarray:
    """The binarised map B of Eq. 10, CRF-refined when ``config.crf``. A map
    with no pixel above gamma is empty without DenseCRF: every unary then
    favours background and the pairwise terms only reward agreeing labels,
    so the CRF keeps it empty."""
    if config.crf and has_foreground(heatmap, threshold):
        return dense_crf(rgb, heatmap, threshold, config)
    return binarize(heatmap, threshold)
