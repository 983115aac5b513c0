"""Eq. 10 binarisation, DenseCRF, connected regions and SAM prompts."""

from __future__ import annotations

import numpy as np

from diffuprompter_plugin.engine.config import DiffuPrompterConfig
from diffuprompter_plugin.engine.crf import binarize, binary_map, dense_crf, foreground_probability
from diffuprompter_plugin.engine.prompts import components, interior_point, mask_box, regions


def _square_scene():
    rgb = np.full((48, 48, 3), 30, np.uint8)
    rgb[12:36, 12:36] = 200
    truth = np.zeros((48, 48), bool)
    truth[12:36, 12:36] = True
    rng = np.random.default_rng(0)
    heat = np.clip(truth * 0.7 + rng.normal(0.15, 0.12, truth.shape), 0, 1).astype(np.float32)
    return rgb, heat, truth


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_binarize_is_the_argmax_of_gamma_and_heatmap():
    heat = np.array([[0.1, 0.4, 0.41, 0.9]], np.float32)
    assert binarize(heat, 0.4).tolist() == [[False, False, True, True]]
    np.testing.assert_array_equal(foreground_probability(heat, 0.4) > 0.5, binarize(heat, 0.4))


def test_dense_crf_removes_speckle_and_follows_edges():
    rgb, heat, truth = _square_scene()
    plain = binarize(heat, 0.4)
    refined = dense_crf(rgb, heat, 0.4, DiffuPrompterConfig())
    assert _iou(refined, truth) > 0.97
    assert (plain & ~truth).sum() > 10  # the noisy threshold leaks ...
    assert (refined & ~truth).sum() < (plain & ~truth).sum() / 5  # ... the CRF does not


def test_dense_crf_accepts_images_read_from_files(tmp_path):
    from PIL import Image

    from diffuprompter_plugin.engine.image import to_rgb_uint8

    rgb, heat, truth = _square_scene()
    Image.fromarray(rgb).save(tmp_path / "scene.png")
    loaded = to_rgb_uint8(tmp_path / "scene.png")  # PIL arrays are read-only
    assert loaded.flags.writeable and loaded.flags.c_contiguous
    assert _iou(dense_crf(loaded, heat, 0.4, DiffuPrompterConfig()), truth) > 0.97


def test_binary_map_switches_crf_off():
    rgb, heat, _ = _square_scene()
    off = binary_map(rgb, heat, 0.4, DiffuPrompterConfig(crf=False))
    np.testing.assert_array_equal(off, binarize(heat, 0.4))


def test_components_drop_fragments_below_min_area():
    mask = np.zeros((30, 30), bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[20:25, 20:26] = True  # 30 px
    mask[0, 29] = True  # 1 px
    parts = components(mask, min_area=16)
    assert [int(p.sum()) for p in parts] == [100, 30]
    assert mask_box(parts[1]) == (20, 20, 26, 25)


def test_interior_point_of_convex_region_is_its_centroid():
    mask = np.zeros((20, 20), bool)
    mask[4:9, 10:15] = True
    assert interior_point(mask) == (12, 6)


def test_interior_point_of_ring_is_snapped_inside():
    yy, xx = np.mgrid[:41, :41]
    ring = np.abs(np.hypot(xx - 20, yy - 20) - 14) < 3
    assert not ring[20, 20]
    x, y = interior_point(ring)
    assert ring[y, x]
    assert abs(np.hypot(x - 20, y - 20) - 14) < 3


def test_regions_give_box_and_point_per_component():
    mask = np.zeros((32, 32), bool)
    mask[1:5, 1:9] = True
    mask[20:30, 10:20] = True
    found = regions(mask, min_area=4)
    assert [r.box for r in found] == [(10, 20, 20, 30), (1, 1, 9, 5)]
    assert all(r.mask[r.point[1], r.point[0]] for r in found)


def test_dense_crf_memory_is_capped_on_large_maps(monkeypatch):
    import pydensecrf.densecrf as dcrf

    from diffuprompter_plugin.engine import crf

    built = []
    original = dcrf.DenseCRF2D
    monkeypatch.setattr(crf, "CRF_MAX_PIXELS", 64 * 64)
    monkeypatch.setattr(
        dcrf, "DenseCRF2D", lambda w, h, n: built.append((w, h)) or original(w, h, n)
    )
    rgb = np.zeros((128, 256, 3), np.uint8)
    heat = np.zeros((128, 256), np.float32)
    heat[32:96, 64:192] = 0.9
    rgb[32:96, 64:192] = 200
    refined = dense_crf(rgb, heat, 0.4, DiffuPrompterConfig())
    assert built == [(90, 45)] and refined.shape == (128, 256)
    assert _iou(refined, heat > 0.4) > 0.95
