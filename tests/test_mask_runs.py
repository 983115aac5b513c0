"""Instance masks as runs of pixels: exact round trips, unions, crops, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np

from diffuprompter_plugin.engine.mask_runs import MaskRuns
from diffuprompter_plugin.engine.segmentation import Instance
from diffuprompter_plugin.engine.tiles import merge_instances


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.random(shape) < rng.random()


def test_encode_decode_round_trip_and_area():
    rng = np.random.default_rng(0)
    for shape in [(0, 5), (5, 0), (1, 1), (7, 13), (40, 3), (31, 64)]:
        mask = random_mask(rng, shape)
        runs = MaskRuns.encode(mask)
        np.testing.assert_array_equal(runs.decode(), mask)
        assert runs.area == mask.sum()
    runs = MaskRuns.encode(np.array([[0, 1, 1, 0, 1], [1, 1, 0, 0, 1]], bool))
    assert runs.rows.tolist() == [0, 0, 1, 1]
    assert runs.starts.tolist() == [1, 4, 0, 4] and runs.ends.tolist() == [3, 5, 2, 5]


def test_union_equals_the_dense_union_and_its_runs():
    rng = np.random.default_rng(1)
    for _ in range(50):
        dense = np.zeros((40, 50), bool)
        parts = []
        for _ in range(3):
            mask = random_mask(rng, (int(rng.integers(1, 30)), int(rng.integers(1, 30))))
            dy = int(rng.integers(0, 41 - mask.shape[0]))
            dx = int(rng.integers(0, 51 - mask.shape[1]))
            dense[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] |= mask
            parts.append((MaskRuns.encode(mask), dx, dy))
        union = MaskRuns.union((40, 50), parts)
        np.testing.assert_array_equal(union.decode(), dense)
        canonical = MaskRuns.encode(dense)
        for attr in ("rows", "starts", "ends"):
            np.testing.assert_array_equal(getattr(union, attr), getattr(canonical, attr))


def test_crop_is_clipped_to_the_mask():
    mask = random_mask(np.random.default_rng(2), (20, 30))
    runs = MaskRuns.encode(mask)
    np.testing.assert_array_equal(runs.crop((5, 3, 17, 11)).decode(), mask[3:11, 5:17])
    np.testing.assert_array_equal(runs.crop((-4, -2, 40, 9)).decode(), mask[:9])
    assert runs.crop((25, 15, 10, 5)).decode().shape == (0, 0)


def test_instance_keeps_runs_and_decodes_its_mask():
    mask = np.zeros((30, 40), bool)
    mask[5:15, 10:30] = True
    inst = Instance.from_full_mask("car", mask, 0.5)
    assert inst.box == (10, 5, 30, 15) and inst.area == 200
    assert inst.mask.shape == (10, 20) and inst.mask.all()
    np.testing.assert_array_equal(inst.shifted(3, 4).full_mask((40, 50))[9:19, 13:33], inst.mask)


def solid(box: tuple[int, int, int, int]) -> Instance:
    """A filled box, built from its runs (no dense mask)."""
    height, width = box[3] - box[1], box[2] - box[0]
    rows = np.arange(height)
    runs = MaskRuns((height, width), rows, np.zeros(height), np.full(height, width))
    return Instance("field", runs, box, 0.5)


def test_an_object_spanning_a_20000_px_scene_is_merged_without_a_scene_size_mask():
    left, right = (0, 0, 10100, 20000), (9900, 0, 20000, 20000)  # two tiles, 200 px overlap
    tracemalloc.start()
    merged = merge_instances([(left, [solid(left)]), (right, [solid(right)])])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(merged) == 1 and merged[0].box == (0, 0, 20000, 20000)
    assert merged[0].area == 20000 * 20000 and merged[0].runs.nbytes == 3 * 4 * 20000
    assert peak < 40 * 2**20  # the overlap window (4 MB each), never the 400 MB union box
