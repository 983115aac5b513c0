"""The DiffuPrompter annotator: heatmaps from Stable Diffusion, instances from SAM."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .class_names import validate_class_names
from .config import DEFAULT_SAM_MODEL, DEFAULT_SD_MODEL, DiffuPrompterConfig, model_source
from .crf import binary_map
from .crf_pool import crf_pool
from .device import default_dtype, resolve_device
from .grounding import Grounded, TextGrounder, check_class_prompts
from .image import ImageLike, opened, to_rgb_uint8
from .segmentation import Instance, SamPrompter, Thresholds, binary_maps
from .stable_diffusion import load_stable_diffusion, load_tokenizer
from .tiling import annotate_scene, needs_tiling

ITEM_ERRORS = (OSError, ValueError, RuntimeError)
"""Errors that fail one image in :meth:`Annotator.annotate_all` (unreadable
file, bad input, out of memory) without stopping the others."""

IMAGES_PER_PROCESS = 2
"""Images in flight per CRF pool process in :meth:`DiffuPrompter.annotate_all`:
while the oldest image waits for its CRF, the others' keep every process busy."""

Item = tuple[Any, ImageLike, Sequence[str]]
"""(key, image, class names): the key comes back with the image's result."""


@dataclass
class Annotation:
    """What :meth:`DiffuPrompter.annotate` returns for one image.

    Attributes:
        heatmaps: ``{class name: H x W float32 in [0, 1]}``; for a scene
            labelled in tiles, a preview whose longest side is
            :data:`~diffuprompter_plugin.engine.tiling.PREVIEW_SIDE`.
        instances: every instance found, of all classes.
        heatmap_files: for a scene labelled in tiles, ``{class name: path}``
            of its full-resolution heatmap GeoTIFFs (see
            :mod:`~diffuprompter_plugin.engine.heatmap_store`), in a
            temporary folder the caller moves or deletes; else empty.
        shape: (H, W) of the image when ``heatmaps`` are previews; None when
            the heatmaps have the image's size.
        spreads: ``{class name: H x W float32 in [0, 1]}``, the spread of
            the noise draws beside each heatmap (see
            :class:`~diffuprompter_plugin.engine.grounding.Grounded`), which
            re-thresholding needs for ``draw_agreement``; empty for a scene
            labelled in tiles.
        spread_files: for a scene labelled in tiles, ``{class name: path}``
            of the spreads' full-resolution GeoTIFFs, in the folder of
            ``heatmap_files``; else empty.
    """

    heatmaps: dict[str, np.ndarray]
    instances: list[Instance] = field(default_factory=list)
    heatmap_files: dict[str, str] = field(default_factory=dict)
    shape: tuple[int, int] | None = None
    spreads: dict[str, np.ndarray] = field(default_factory=dict)
    spread_files: dict[str, str] = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the annotated image."""
        return self.shape or next(iter(self.heatmaps.values())).shape


def _guarded(step: Callable[[], Any]) -> Any:
    """The step's result, or the exception of a failed image."""
    try:
        return step()
    except ITEM_ERRORS as e:
        return e


class Annotator:
    """What the FiftyOne layer needs of an annotator: ``config``,
    :meth:`check_class_names`, :meth:`annotate` and :meth:`annotate_all`.

    Attributes:
        config: the method settings.
        sources: the ids and paths the models were loaded from
            (``sd_model``, ``sam_model``, ``sam_checkpoint``; see
            :func:`~.config.model_source`), empty when unknown.
    """

    config: DiffuPrompterConfig
    sources: Mapping[str, str | None] = MappingProxyType({})

    def check_class_names(self, class_names: Sequence[str]) -> list[str]:
        """The names, checked before any image is read: see
        :func:`validate_class_names`.

        Raises:
            ValueError: a name this annotator cannot take.
        """
        return validate_class_names(class_names)

    def annotate(
        self, image: ImageLike, class_names: Sequence[str], thresholds: Thresholds = None
    ) -> Annotation:
        """Heatmaps and instances of ``class_names`` in ``image``."""
        raise NotImplementedError

    def annotate_all(
        self, items: Iterable[Item], thresholds: Thresholds = None
    ) -> Iterator[tuple[Any, Annotation | Exception]]:
        """Annotates many images; yields ``(key, result)`` in input order, the
        result being the exception (see :data:`ITEM_ERRORS`) of an image that
        failed, so that one bad file does not stop the rest."""
        for key, image, names in items:
            yield key, _guarded(partial(self.annotate, image, names, thresholds))


class DiffuPrompter(Annotator):
    """Training-free instance annotation of remote-sensing images.

    Args:
        grounder: the Stable Diffusion heatmap stage.
        sam_prompter: the SAM stage.
        config: method settings shared by both stages.
    """

    def __init__(
        self, grounder: TextGrounder, sam_prompter: SamPrompter, config: DiffuPrompterConfig
    ) -> None:
        self.grounder = grounder
        self.sam_prompter = sam_prompter
        self.config = config

    @property
    def config(self) -> DiffuPrompterConfig:
        """Method settings of both stages. Assigning a new config (e.g.
        ``model.config = model.config.replace(loops=10)``) sets it on the
        grounder and the SAM prompter too, so what a run records is what ran."""
        return self._config

    @config.setter
    def config(self, config: DiffuPrompterConfig) -> None:
        self._config = self.grounder.config = self.sam_prompter.config = config

    @classmethod
    def from_pretrained(
        cls,
        sd_model: str | os.PathLike | Any = DEFAULT_SD_MODEL,
        sam_model: str | os.PathLike | Any = DEFAULT_SAM_MODEL,
        sam_checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        config: DiffuPrompterConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> DiffuPrompter:
        """Loads both models.

        Args:
            sd_model: hub id, local diffusers folder, or a built pipeline.
            sam_model: ``vit_h``/``vit_l``/``vit_b``, a custom SAM folder, or a
                built ``segment_anything`` Sam.
            sam_checkpoint: checkpoint file for a registry type; None downloads
                Meta's checkpoint into the cache (SHA-256 checked).
            device: default CUDA when available, else CPU.
            config: method settings (default: the paper's).
            dtype: default float16 on GPU, float32 on CPU; SD's weights are
                cast to it, SAM runs under autocast to it.

        Raises:
            ModelUnavailableError: weights are missing or cannot be fetched.
        """
        config = config or DiffuPrompterConfig()
        device = resolve_device(device)
        dtype = dtype or default_dtype(device)
        sd = load_stable_diffusion(sd_model, device, dtype)
        sam_prompter = SamPrompter.from_pretrained(
            sam_model, sam_checkpoint, device, config, dtype
        )
        model = cls(TextGrounder(sd, config, device, dtype), sam_prompter, config)
        model.sources = {**sam_prompter.sources, "sd_model": model_source(sd_model)}
        return model

    def check_class_names(self, class_names: Sequence[str]) -> list[str]:
        """As :meth:`Annotator.check_class_names`; also checks that each
        class's prompt fits the text encoder, so a too-long name is refused
        before any image is read.

        Raises:
            ValueError: invalid names, or a prompt longer than the encoder takes.
        """
        names = super().check_class_names(class_names)
        self.grounder.check_prompts(names)
        return names

    def heatmap(self, image: ImageLike, class_name: str) -> np.ndarray:
        """The LSAD heatmap of one class: H x W float32 in [0, 1]."""
        return self.grounder.heatmaps(image, [class_name])[class_name]

    def annotate(
        self,
        image: ImageLike,
        class_names: Sequence[str],
        thresholds: Thresholds = None,
        progress: bool = False,
    ) -> Annotation:
        """Heatmaps and instances of ``class_names`` in ``image``.

        Args:
            image: array, PIL image or file path.
            class_names: one or more class names.
            thresholds: gamma for all classes, per class, or None for the
                config's.
            progress: show a bar over the U-Net calls of the classes'
                heatmaps, the long part of a call on many classes, or, for a
                scene labelled in tiles, over its tiles grounded (off by
                default: runs over many images show their own bar per image).

        Raises:
            ValueError: empty or duplicate class names.
            InputImageError: the image cannot be used.
        """
        grounded = self._ground(image, class_names, thresholds, progress)
        if isinstance(grounded, Annotation):
            return grounded
        rgb, maps, gammas = grounded
        binaries = binary_maps(rgb, maps.heatmaps, gammas, self.config)
        return self._annotation(rgb, maps, binaries)

    def _annotation(
        self, rgb: np.ndarray, maps: Grounded, binaries: Mapping[str, np.ndarray]
    ) -> Annotation:
        """The SAM stage: an image's Annotation from its grounding and binary maps."""
        instances = self.sam_prompter.prompt(rgb, maps.heatmaps, binaries, maps.spreads)
        return Annotation(maps.heatmaps, instances, spreads=maps.spreads)

    def annotate_all(
        self, items: Iterable[Item], thresholds: Thresholds = None
    ) -> Iterator[tuple[Any, Annotation | Exception]]:
        """As :meth:`Annotator.annotate_all`. With ``config.crf_workers`` > 0,
        one pool of that many single-threaded processes runs the DenseCRF of
        every (image, class) of the whole stream, while the models work on
        the following images; up to :data:`IMAGES_PER_PROCESS` images per
        process are in flight, so no process waits for the models."""
        processes = self.config.crf_workers if self.config.crf else 0
        if processes == 0:
            yield from super().annotate_all(items, thresholds)
            return
        with crf_pool(processes) as pool:
            pending: deque = deque()
            for key, image, names in items:
                submit = partial(self._submit_crf, pool, image, names, thresholds)
                pending.append((key, _guarded(submit)))
                if len(pending) > IMAGES_PER_PROCESS * processes:
                    yield self._finish(*pending.popleft())
            while pending:
                yield self._finish(*pending.popleft())

    def _ground(
        self,
        image: ImageLike,
        names: Sequence[str],
        thresholds: Thresholds,
        progress: bool = False,
    ) -> tuple[np.ndarray, Grounded, dict[str, float]] | Annotation:
        """The RGB image, its grounding and the per-class thresholds. A scene
        larger than ``config.tile_size`` is labelled in tiles
        (:func:`~diffuprompter_plugin.engine.tiling.annotate_scene`) and its
        Annotation returned."""
        names = validate_class_names(names)
        with opened(image) as raster:
            if needs_tiling(raster.height, raster.width, self.config):
                return annotate_scene(self, raster, names, thresholds, progress)
            rgb = to_rgb_uint8(raster)
        grounded = self.grounder.ground(rgb, names, progress=progress)
        return rgb, grounded, self.sam_prompter.thresholds_for(names, thresholds)

    def _submit_crf(
        self, pool: Executor, image: ImageLike, names: Sequence[str], thresholds: Thresholds
    ) -> tuple[np.ndarray, Grounded, dict[str, Future]] | Annotation:
        """Grounds an image and submits the DenseCRF of each class to
        ``pool``; a tiled scene comes back labelled."""
        grounded = self._ground(image, names, thresholds)
        if isinstance(grounded, Annotation):
            return grounded
        rgb, maps, gammas = grounded
        futures = {
            name: pool.submit(binary_map, rgb, heatmap, gammas[name], self.config)
            for name, heatmap in maps.heatmaps.items()
        }
        return rgb, maps, futures

    def _finish(self, key: Any, grounded: Any) -> tuple[Any, Annotation | Exception]:
        """The SAM stage of an image whose CRF was submitted by :meth:`_submit_crf`."""
        if isinstance(grounded, (Exception, Annotation)):
            return key, grounded
        rgb, maps, futures = grounded

        def prompt() -> Annotation:
            binaries = {name: future.result() for name, future in futures.items()}
            return self._annotation(rgb, maps, binaries)

        return key, _guarded(prompt)


def check_prompts(sd_model: str | os.PathLike, template: str, class_names: Sequence[str]) -> bool:
    """Checks, with the tokenizer of ``sd_model`` alone and no weights
    loaded, that its text encoder takes each class's prompt, as
    :meth:`DiffuPrompter.check_class_names` does once the models are loaded.

    Returns:
        False when the tokenizer is not on this machine (a hub id that is
        not in the Hugging Face cache): nothing was checked.

    Raises:
        ValueError: invalid names, or a prompt the text encoder cannot take.
    """
    names = validate_class_names(class_names)
    tokenizer = load_tokenizer(sd_model)
    if tokenizer is None:
        return False
    check_class_prompts(tokenizer, template, names)
    return True
