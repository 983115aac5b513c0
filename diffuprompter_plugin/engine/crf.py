"""Binarisation of a heatmap at threshold gamma and DenseCRF refinement (Eq. 10)."""

from __future__ import annotations

import numpy as np

from .config import DiffuPrompterConfig

CLIP = 1e-5


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

    Returns:
        H x W bool mask.
    """
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
    q = np.asarray(crf.inference(config.crf_iterations)).reshape(2, height, width)
    return q[1] > q[0]


def binary_map(
    rgb: np.ndarray, heatmap: np.ndarray, threshold: float, config: DiffuPrompterConfig
) -> np.ndarray:
    """The binarised map B of Eq. 10, CRF-refined when ``config.crf``."""
    if config.crf:
        return dense_crf(rgb, heatmap, threshold, config)
    return binarize(heatmap, threshold)
