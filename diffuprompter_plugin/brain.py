"""The record of a DiffuPrompter brain run: its config, method and results.

These classes live in this installed module so that every process (App,
delegated workers, notebooks) can load a stored run by their full names;
moving them would orphan existing runs. The run record owns its models:
:meth:`PseudoLabelsConfig.load_model` and
:meth:`PseudoLabelsConfig.load_prompter` are the one way resume,
re-threshold and evaluation load what a run was made with. Torch and the
models are imported only when they are loaded.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import fiftyone as fo
import fiftyone.core.brain as fob

from .engine.config import DiffuPrompterConfig

METHOD = "diffuprompter"
SMOKE_LABEL = "SMOKE TEST: tiny random-weight models, labels are meaningless"
PREBUILT = "prebuilt"
"""The model record of a run given an already-built model."""
DEFAULT_PRED_FIELD = "dp_instances"
"""The ``fo.Detections`` field of a run's instances, unless another is given."""
DEFAULT_HEATMAP_FIELD = "dp_heatmap"
"""The prefix of a run's ``fo.Heatmap`` fields (``<prefix>_<class>``)."""


def quality_field(pred_field: str) -> str:
    """``<pred_field>_quality``: the sample field holding the lowest
    ``quality`` of the sample's instances (None without instances), so that
    ``sort_by`` lists the samples most in need of review first."""
    return f"{pred_field}_quality"


class PseudoLabelsConfig(fob.BrainMethodConfig):
    """Settings of a DiffuPrompter brain run, stored with the run.

    Args:
        pred_field: the ``fo.Detections`` instance field.
        heatmap_fields: ``{class name: fo.Heatmap field}``.
        error_field: string field holding a failed sample's error.
        heatmap_dir: folder of the 16-bit heatmap PNGs of this run.
        classes: fixed class names applied to every sample, or None.
        class_field: Classification(s) field giving each sample's classes.
        settings: :meth:`DiffuPrompterConfig.to_dict` of the method.
        models: which Stable Diffusion and SAM produced the labels: ids or
            paths, ``PREBUILT`` for a model object whose source is unknown.
        smoke: True for runs with tiny random-weight models.
        rethreshold_fields: ``fo.Detections`` fields that re-thresholding
            wrote from this run's heatmaps; deleted with the run.
        run_id: the run's own id, given when it is registered and kept
            through renames: its claims and its heatmap folder are named by
            it, and its workers write only while a run with this id exists.
            None in runs stored before run ids (given one when resumed).
    """

    def __init__(
        self,
        pred_field: str,
        heatmap_fields: dict[str, str],
        error_field: str,
        heatmap_dir: str,
        classes: list[str] | None = None,
        class_field: str | None = None,
        settings: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        smoke: bool = False,
        rethreshold_fields: list[str] | None = None,
        run_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.pred_field = pred_field
        self.heatmap_fields = heatmap_fields
        self.error_field = error_field
        self.heatmap_dir = heatmap_dir
        self.classes = classes
        self.class_field = class_field
        self.settings = settings or DiffuPrompterConfig().to_dict()
        self.models = models or {}
        self.smoke = smoke
        self.rethreshold_fields = rethreshold_fields or []
        self.run_id = run_id
        super().__init__(**kwargs)

    @property
    def type(self) -> str:
        return "brain"

    @property
    def method(self) -> str:
        return METHOD

    def field_types(self) -> dict[str, Any]:
        """The run's sample fields and their types: a label class, or a
        field class for a primitive."""
        fields = {
            self.pred_field: fo.Detections,
            quality_field(self.pred_field): fo.FloatField,
            self.error_field: fo.StringField,
        }
        fields.update(dict.fromkeys(self.heatmap_fields.values(), fo.Heatmap))
        return fields

    def engine_config(self) -> DiffuPrompterConfig:
        """The method settings as the engine's config."""
        return DiffuPrompterConfig.from_dict(self.settings)

    @property
    def models_recorded(self) -> bool:
        """False for a run made with a model object of unknown source: its
        weights are not on record, so resuming it needs the model passed."""
        return self.sam_recorded and self.models.get("sd_model") != PREBUILT

    @property
    def sam_recorded(self) -> bool:
        """False when the run's SAM is not on record, so rerunning SAM
        (re-thresholding) needs one passed."""
        return self.models.get("sam_model") != PREBUILT

    def load_model(self, device: str | None = None, model: Any = None) -> Any:
        """The ``DiffuPrompter`` that labels this run: ``model`` when given,
        else the recorded Stable Diffusion and SAM with the run's settings;
        checked to take the run's class names.

        Raises:
            ValueError: the run was made with an already-built model (not on
                record) and no ``model`` is given, or a class name the model
                cannot take (e.g. a prompt too long for its text encoder).
            ModelUnavailableError: the recorded weights cannot be found.
        """
        if model is None:
            self._require_recorded(self.models_recorded, "model=")
            from .engine.pipeline import DiffuPrompter

            model = DiffuPrompter.from_pretrained(
                sd_model=self.models["sd_model"],
                sam_model=self.models["sam_model"],
                sam_checkpoint=self.models.get("sam_checkpoint"),
                device=device,
                config=self.engine_config(),
            )
        model.check_class_names(list(self.heatmap_fields))
        return model

    def load_prompter(
        self,
        sam_model: Any = None,
        sam_checkpoint: str | None = None,
        device: str | None = None,
        prompter: Any = None,
    ) -> Any:
        """The ``SamPrompter`` that turns this run's heatmaps into instances:
        a copy of ``prompter`` when given, else ``sam_model`` (and
        ``sam_checkpoint``), else the recorded SAM and its checkpoint
        (unless another checkpoint is given), all with the run's settings
        (tiling, DenseCRF, SAM), whatever ``prompter``'s own.

        Raises:
            ValueError: no SAM is given and the run's is not on record.
            ModelUnavailableError: the SAM weights cannot be found.
        """
        if prompter is not None:
            prompter = copy.copy(prompter)  # the caller's keeps its settings
            prompter.config = self.engine_config()
            return prompter
        if sam_model is None:
            self._require_recorded(
                self.sam_recorded, "sam_model= (and sam_checkpoint=) or prompter="
            )
            sam_model = self.models["sam_model"]
            sam_checkpoint = sam_checkpoint or self.models.get("sam_checkpoint")
        from .engine.segmentation import SamPrompter

        return SamPrompter.from_pretrained(
            sam_model, sam_checkpoint, device=device, config=self.engine_config()
        )

    @staticmethod
    def _require_recorded(recorded: bool, remedy: str) -> None:
        """Raises unless the models needed are on record; ``remedy`` says
        what to pass instead."""
        if not recorded:
            raise ValueError(
                "This brain run was made with an already-built model, so its models "
                f"are not on record: pass {remedy}"
            )


class PseudoLabels(fob.BrainMethod):
    """The brain method: knows the run's fields and files, and removes them."""

    def get_fields(self, samples: Any, brain_key: str) -> list[str]:
        rethresholded = self.config.rethreshold_fields
        return [
            *self.config.field_types(),
            *rethresholded,
            *(quality_field(field) for field in rethresholded),
        ]

    def cleanup(self, samples: Any, brain_key: str) -> None:
        """Deletes the run's claims, its fields, the re-threshold fields it
        fed, and its heatmap folder. Its workers stop at their next write
        (they check that the run exists before each)."""
        from .claims import end_run

        if self.config.run_id is not None:
            end_run(self.config.run_id)
        dataset = samples._dataset
        fields = [f for f in self.get_fields(samples, brain_key) if dataset.has_sample_field(f)]
        dataset.delete_sample_fields(fields, error_level=1)
        shutil.rmtree(self.config.heatmap_dir, ignore_errors=True)

    def _validate_run(self, samples: Any, brain_key: str, existing_info: Any) -> None:
        self._validate_fields_match(brain_key, "pred_field", existing_info)


class PseudoLabelsResults(fob.BrainResults):
    """Counts of a run, recomputed from the dataset each time a run ends.

    Attributes:
        processed: samples with instances written.
        instances: total instances.
        per_class: ``{class: instance count}``.
        failures: ``{sample id: error}`` of samples that failed.
    """

    def __init__(
        self,
        samples: Any,
        config: PseudoLabelsConfig,
        brain_key: str,
        processed: int = 0,
        instances: int = 0,
        per_class: dict[str, int] | None = None,
        failures: dict[str, str] | None = None,
        backend: Any = None,
    ) -> None:
        super().__init__(samples, config, brain_key, backend=backend)
        self.processed = processed
        self.instances = instances
        self.per_class = per_class or {}
        self.failures = failures or {}

    def attributes(self) -> list[str]:
        return ["cls", "processed", "instances", "per_class", "failures"]

    @classmethod
    def _from_dict(cls, d, samples, config, brain_key):
        return cls(
            samples,
            config,
            brain_key,
            processed=d.get("processed", 0),
            instances=d.get("instances", 0),
            per_class=d.get("per_class"),
            failures=d.get("failures"),
        )

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary for logs and operator outputs."""
        return {
            "brain_key": self.key,
            "processed": self.processed,
            "instances": self.instances,
            "per_class": self.per_class,
            "failed": len(self.failures),
            "failures": self.failures,
            "smoke": self.config.smoke,
        }


def stored_config(samples: Any, brain_key: str) -> PseudoLabelsConfig:
    """The config of the DiffuPrompter run ``brain_key`` on ``samples``.

    Raises:
        ValueError: no run has that key, or another kind of run has it.
    """
    if brain_key not in samples.list_brain_runs():
        raise ValueError(f"No DiffuPrompter brain run '{brain_key}' on this collection")
    config = samples.get_brain_info(brain_key).config
    if getattr(config, "method", None) != METHOD:
        raise ValueError(
            f"Brain key '{brain_key}' is taken by a '{getattr(config, 'method', '?')}' "
            f"run ({type(config).__name__}), not a DiffuPrompter run"
        )
    return config
