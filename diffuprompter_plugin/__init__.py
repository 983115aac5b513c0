"""DiffuPrompter: training-free instance masks for remote-sensing images.

The engine (``DiffuPrompter``, ``DiffuPrompterConfig``) does not import
FiftyOne; the FiftyOne layer (``compute_pseudo_labels`` and friends) does.
Names are resolved lazily, so ``import diffuprompter_plugin.brain`` in the App
does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "DiffuPrompterConfig": "engine.config",
    "DiffuPrompter": "engine.pipeline",
    "Annotation": "engine.pipeline",
    "Instance": "engine.segmentation",
    "SamPrompter": "engine.segmentation",
    "TextGrounder": "engine.grounding",
    "ModelUnavailableError": "engine.errors",
    "InputImageError": "engine.errors",
    "compute_pseudo_labels": "labelling",
    "resume_pseudo_labels": "labelling",
    "queue_pseudo_labels": "labelling",
    "start_pseudo_labels": "labelling",
    "pseudo_labels_status": "labelling",
    "RunInProgressError": "claims",
    "RunDeletedError": "claims",
    "cleanup_claims": "claims",
    "rethreshold_pseudo_labels": "rethreshold",
    "evaluate_pseudo_labels": "evaluation",
    "calibrate_thresholds": "evaluation",
    "export_coco": "coco",
    "review_view": "review",
    "accept_pseudo_labels": "review",
    "review_status": "review",
    "calibrate_acceptance": "calibration",
    "export_training_set": "export",
    "compare_signals": "ranking",
    "export_dota": "dota",
    "import_stac": "importers.stac",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffuprompter_plugin' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
