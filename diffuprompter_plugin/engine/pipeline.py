"""The DiffuPrompter annotator: heatmaps from Stable Diffusion, instances from SAM."""

from __future__ import annotations

import contextlib
import os
import shutil
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
from .crf import binarize, binary_map
from .crf_pool import InlineExecutor, crf_pool
from .device import default_dtype, resolve_device
from .grounding import Grounded, TextGrounder, check_class_prompts
from .image import ImageLike, opened, read_rgb
from .local_copy import local_copy
from .raster import Box, has_data
from .scenes import TileWork, heatmap_folder, scene_previews, scene_steps, tile_instances
from .segmentation import Instance, SamPrompter, Thresholds, zero_nodata
from .stable_diffusion import load_stable_diffusion, load_tokenizer
from .tiles import merge_instances, needs_tiling

ITEM_ERRORS = (OSError, ValueError, RuntimeError)
"""Errors that fail one image in :meth:`Annotator.annotate_all` (unreadable
file, bad input, out of memory) without stopping the others."""

TILES_PER_PROCESS = 2
"""Tiles (an image labelled whole is one) whose DenseCRF is in flight per
CRF pool process in :meth:`DiffuPrompter.annotate_all`: while the oldest waits for
its CRF, the others' keep every process busy; memory holds these tiles."""

Item = tuple[Any, ImageLike, Sequence[str]]
"""(key, image, class names): the key comes back with the image's result."""


@dataclass
class Annotation:
    """What :meth:`DiffuPrompter.annotate` returns for one image.

    Attributes:
        heatmaps: ``{class name: H x W float32 in [0, 1]}``; for a scene
            labelled in tiles, a preview whose longest side is
            :data:`~diffuprompter_plugin.engine.scenes.PREVIEW_SIDE`.
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

    def discard(self) -> None:
        """Deletes the temporary folder of a scene's heatmap files (what a
        caller that does not keep them calls); nothing for an image."""
        for path in [*self.heatmap_files.values(), *self.spread_files.values()][:1]:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)


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
        """The LSAD heatmap of one class in an image labelled whole: H x W
        float32 in [0, 1], 0 on nodata pixels; the map :meth:`annotate`
        thresholds.

        Raises:
            ValueError: the image is labelled in tiles (a side over
                ``tile_size``); :meth:`annotate` gives a scene's heatmaps,
                as full-resolution GeoTIFFs and previews.
            InputImageError: the image cannot be used.
        """
        with opened(image) as raster:
            if needs_tiling(raster.height, raster.width, self.config):
                raise ValueError(
                    f"'{raster.name}' ({raster.width} x {raster.height} px) is labelled in "
                    f"tiles of {self.config.tile_size} px: use annotate(), whose "
                    "heatmap_files hold its full-resolution heatmaps"
                )
            rgb, valid = read_rgb(raster)
        return self._ground_whole(rgb, valid, [class_name]).heatmaps[class_name]

    def _ground_whole(
        self,
        rgb: np.ndarray,
        valid: np.ndarray | None,
        names: Sequence[str],
        progress: bool = False,
    ) -> Grounded:
        """Heatmaps and spreads of an image labelled whole (``rgb``: H x W x 3
        uint8, ``valid``: H x W bool or None), 0 on nodata; an image entirely
        nodata is not run."""
        if has_data(valid):
            maps = self.grounder.ground(rgb, names, progress=progress)
        else:
            maps = Grounded(
                {n: np.zeros(valid.shape, np.float32) for n in names},
                {n: np.zeros(valid.shape, np.float32) for n in names},
                {n: 0.0 for n in names},
            )
        zero_nodata(maps.heatmaps, valid)
        zero_nodata(maps.spreads, valid)
        return maps

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
        processes = self.config.crf_workers if self.config.crf else 0
        ((_, annotation),) = self._stream(
            [(None, image, class_names)], thresholds, processes, (), progress
        )
        return annotation

    def annotate_all(
        self, items: Iterable[Item], thresholds: Thresholds = None
    ) -> Iterator[tuple[Any, Annotation | Exception]]:
        """As :meth:`Annotator.annotate_all`: images and scenes alike, as one
        stream of tiles (an image labelled whole is one tile).

        With ``config.crf_workers`` > 0, one pool of that many
        single-threaded processes runs the DenseCRF of every (tile, class)
        with foreground of the whole stream, while the models ground the
        next image or scene; SAM prompts a tile as soon as its CRF is back.
        Up to :data:`TILES_PER_PROCESS` tiles per process are in flight, so
        no process waits for the models and memory holds a few tiles and
        the next item's group of tiles, not a scene. The results are those
        of the inline path (``crf_workers=0``), mask for mask.

        A scene's heatmap files belong to the caller once its result is
        yielded (move them, or :meth:`Annotation.discard` them), even if
        the caller then stops the stream; those of the items not yet
        yielded are deleted when it stops."""
        processes = self.config.crf_workers if self.config.crf else 0
        yield from self._stream(items, thresholds, processes, ITEM_ERRORS)

    def _stream(
        self,
        items: Iterable[Item],
        thresholds: Thresholds,
        processes: int,
        errors: tuple[type[Exception], ...],
        progress: bool = False,
    ) -> Iterator[tuple[Any, Annotation | Exception]]:
        """Labels ``items`` in order; an item failing with one of ``errors``
        yields its exception (other errors propagate). DenseCRF runs in a
        pool of ``processes`` processes, or inline with 0.

        With a pool, up to two items are open: the older one's tiles go to
        the pool as it has room, and while it is full the models ground the
        next item (taken from ``items`` only then). A scene's tiles can be
        binarised only once all of them are grounded (:mod:`.scenes`), so
        this is where one scene's DenseCRF and SAM meet the next one's
        grounding. An item that fails sends no more tiles to the pool."""
        limit = max(1, TILES_PER_PROCESS * processes)
        pending: deque[_Pending] = deque()
        feeds: deque[_Feed] = deque()
        items = iter(items)

        def open_next() -> bool:
            """Opens the next item, if any is left."""
            entry = next(items, None)
            if entry is not None:
                key, image, names = entry
                item = _Item(key)
                feeds.append(_Feed(item, self._steps(item, image, names, thresholds, progress)))
            return entry is not None

        with crf_pool(processes) as pool:
            try:
                while feeds or open_next():
                    head = feeds[0]
                    if head.item.error is not None and not head.ended:
                        head.stop()  # failed (a tile's CRF): its other tiles are not run
                    room = _in_flight(pending) < limit
                    if head.held is not None and room:
                        pending.append(self._submitted(pool, head, errors))
                    elif head.ended:
                        pending.append(_Pending(head.item))
                        feeds.popleft()
                    elif head.ready:
                        head.step(errors)
                    elif processes and (len(feeds) > 1 or open_next()) and feeds[1].ready:
                        feeds[1].step(errors)  # the pool is full: ground the next item
                    else:  # the pool is full and the next item waits too
                        yield from self._settle(pending, limit - 1, errors)
                    yield from self._settle(pending, limit, errors)
                yield from self._settle(pending, -1, errors)
            except BaseException:  # stopped: the scene files of unfinished items go
                for unfinished in pending:
                    unfinished.item.discard()
                for feed in feeds:
                    with contextlib.suppress(Exception):
                        feed.stop()
                    feed.item.discard()
                raise

    def _submitted(
        self, pool: Executor, feed: _Feed, errors: tuple[type[Exception], ...]
    ) -> _Pending:
        """The feed's held tile, its DenseCRF submitted to ``pool`` (a pool
        that fails the submission fails the item)."""
        work, feed.held = feed.held, None
        try:
            return _Pending(feed.item, work, self._submit_crf(pool, work))
        except errors as e:
            feed.item.error = e
            return _Pending(feed.item, work)

    def _steps(
        self,
        item: _Item,
        image: ImageLike,
        names: Sequence[str],
        thresholds: Thresholds,
        progress: bool,
    ) -> Iterator[TileWork | None]:
        """The steps of one image: work that gives no tile (None: a group of
        a scene's tiles grounded, or a tile written without foreground) and
        the tiles whose heatmaps are final
        (:class:`~.scenes.TileWork`). Sets ``item.finish``, and
        ``item.discard`` for a scene's heatmap files.
        An image larger than ``tile_size`` is labelled in tiles
        (:func:`~.tiles.needs_tiling`, :mod:`~.scenes`)."""
        names = validate_class_names(names)
        gammas = self.sam_prompter.thresholds_for(names, thresholds)
        with opened(image) as raster:
            if needs_tiling(raster.height, raster.width, self.config):
                folder, paths, spread_paths = heatmap_folder(names)
                item.discard = partial(shutil.rmtree, folder, ignore_errors=True)
                try:
                    with local_copy(raster) as scene:  # remote: each block fetched once
                        yield from scene_steps(
                            self.grounder, scene, names, gammas, paths, spread_paths, progress
                        )
                except BaseException:  # failed or abandoned: its files go
                    item.discard()
                    raise
                shape = (raster.height, raster.width)
                item.finish = lambda tiles: Annotation(
                    scene_previews(paths),
                    merge_instances(tiles),
                    paths,
                    shape,
                    spread_files=spread_paths,
                )
                return
            rgb, valid = read_rgb(raster)
        maps = self._ground_whole(rgb, valid, names, progress)
        heatmaps, spreads = maps.heatmaps, maps.spreads
        item.finish = lambda tiles: Annotation(
            heatmaps, [i for _, found in tiles for i in found], spreads=spreads
        )
        box = (0, 0, rgb.shape[1], rgb.shape[0])
        yield TileWork(box, rgb, heatmaps, gammas, valid, spreads)

    def _submit_crf(self, pool: Executor, work: TileWork) -> dict[str, Future]:
        """The DenseCRF of each class of a tile with foreground, submitted to
        ``pool``; the others' empty binary maps (:func:`~.crf.binary_map`)."""
        found = work.with_foreground()
        return {
            name: pool.submit(binary_map, work.rgb, heat, work.gammas[name], self.config)
            if name in found
            else InlineExecutor().submit(binarize, heat, work.gammas[name])
            for name, heat in work.heatmaps.items()
        }

    def _settle(
        self, pending: deque[_Pending], limit: int, errors: tuple[type[Exception], ...]
    ) -> Iterator[tuple[Any, Annotation | Exception]]:
        """Prompts SAM with the oldest tiles whose CRF is back and yields the
        images all of whose tiles are done, in order; waits for the oldest
        tile while more than ``limit`` are in flight (-1: until none is)."""
        while pending:
            head = pending[0]
            if head.work is not None and _in_flight(pending) <= limit and not head.done():
                return
            pending.popleft()
            item = head.item
            if head.work is None:  # the item's last tile is done
                yield item.key, item.result(errors)  # its files are the consumer's now
            elif item.error is not None:  # its tiles are not prompted: not run, if not begun
                for future in head.binaries.values():
                    future.cancel()
            else:
                try:
                    binaries = {name: f.result() for name, f in head.binaries.items()}
                    item.tiles.append(
                        (head.work.tile, tile_instances(self.sam_prompter, head.work, binaries))
                    )
                except errors as e:
                    item.error = e


@dataclass
class _Item:
    """One image of a stream: what its tiles gave so far."""

    key: Any
    tiles: list[tuple[Box, list[Instance]]] = field(default_factory=list)
    error: Exception | None = None
    finish: Callable[[list[tuple[Box, list[Instance]]]], Annotation] | None = None
    discard: Callable[[], None] = lambda: None

    def result(self, errors: tuple[type[Exception], ...]) -> Annotation | Exception:
        """The item's Annotation from its tiles, or its error (its scene
        heatmap files are then deleted)."""
        if self.error is None:
            try:
                return self.finish(self.tiles)
            except errors as e:
                self.error = e
            except BaseException:
                self.discard()
                raise
        self.discard()
        return self.error


@dataclass
class _Feed:
    """An open item of a stream and its steps (:meth:`DiffuPrompter._steps`)."""

    item: _Item
    steps: Iterator[TileWork | None]
    held: TileWork | None = None
    """The item's next tile, grounded, waiting for room in the CRF pool."""
    ended: bool = False

    @property
    def ready(self) -> bool:
        """Whether the item can take its next step."""
        return self.held is None and not self.ended

    def stop(self) -> None:
        """Ends the item where it is (its steps' cleanup runs)."""
        self.held = None
        self.ended = True
        self.steps.close()

    def step(self, errors: tuple[type[Exception], ...]) -> None:
        """Runs the item's next step: grounding, or a tile (then held); an
        error of ``errors`` ends the item with it."""
        try:
            self.held = next(self.steps)
        except StopIteration:
            self.ended = True
        except errors as e:
            self.item.error = e
            self.ended = True


@dataclass
class _Pending:
    """A tile of an item whose DenseCRF was submitted; without ``work``, the
    item's end."""

    item: _Item
    work: TileWork | None = None
    binaries: dict[str, Future] = field(default_factory=dict)

    def done(self) -> bool:
        return all(future.done() for future in self.binaries.values())


def _in_flight(pending: Iterable[_Pending]) -> int:
    """Tiles of ``pending`` not yet prompted (item ends are not tiles)."""
    return sum(p.work is not None for p in pending)


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
