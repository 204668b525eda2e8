"""The card a trainer with `BigSmallTrainerMixin` writes: the kit's card, with the Trainer's training sections below.

`BigSmallTrainerMixin.create_model_card` (and so `push_to_hub`) calls `write_trainer_card`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..energy.callback import EnergyCallback
from ..energy.card import ENERGY_FILE_NAME, co2_eq_emissions
from ..utils.files import atomic_write_text
from .card import build_model_card

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

_TRAINER_SECTIONS = "## Training procedure"
# `Trainer.create_model_card`'s parameters, in order, so positional arguments can be named
_CREATE_MODEL_CARD_ARGS = ("language", "license", "tags", "model_name", "finetuned_from", "tasks", "dataset_tags",
                           "dataset", "dataset_args")


def _trainer_draft(trainer, options: dict[str, Any], existing: ModelCard | None) -> ModelCard:
    """The card `Trainer.create_model_card` would write, built in memory with the class it uses."""
    from huggingface_hub import ModelCard
    from transformers.modelcard import TrainingSummary

    tags = options.get("tags")
    tags = [tags] if isinstance(tags, str) else list(tags) if tags is not None else None
    if tags is not None and existing is not None:
        tags += [tag for tag in (existing.data.tags or []) if tag not in tags]  # as the Trainer keeps them
    summary = TrainingSummary.from_trainer(trainer, **{**{k: v for k, v in options.items() if k in _CREATE_MODEL_CARD_ARGS},
                                                       "tags": tags})
    return ModelCard(summary.to_model_card())


def _writes_energy(trainer) -> bool:
    return all(cb.add_to_model_card for cb in trainer.callback_handler.callbacks if isinstance(cb, EnergyCallback))


def _draft_card_text(draft: ModelCard, output_dir: Path, energy: bool) -> str:
    """Before a model is saved there is nothing to describe: the Trainer's draft, with the run's emissions."""
    if energy and (output_dir / ENERGY_FILE_NAME).is_file():
        draft.data.co2_eq_emissions = co2_eq_emissions(output_dir / ENERGY_FILE_NAME)
    return str(draft)


def _kit_card_text(trainer, options: dict[str, Any], draft: ModelCard, output_dir: Path, energy: bool) -> str:
    """The kit's card of the saved model, built from the Trainer's card options, with the draft's training sections."""
    tags = options.get("tags")
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    tags += [tag for tag in (draft.data.tags or []) if tag not in tags]
    dataset = options.get("dataset")
    dataset = dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset
    # `push_to_hub` passes the last part of `hub_model_id` as model_name: use the full id when they agree
    model_name, hub_model_id = options.get("model_name"), getattr(trainer.args, "hub_model_id", None)
    same = hub_model_id and (model_name is None or hub_model_id.split("/")[-1] == model_name)
    card = build_model_card(
        output_dir, repo_id=hub_model_id if same else model_name,
        dataset=dataset, base_model=options.get("finetuned_from"), license=options.get("license") or "apache-2.0",
        language=options.get("language") or "en", tags=tags, energy=energy,
    )
    text = str(card)
    if _TRAINER_SECTIONS in draft.text:
        text = text.rstrip("\n") + "\n\n" + draft.text[draft.text.index(_TRAINER_SECTIONS):]
    return text


def write_trainer_card(trainer, *args: Any, **kwargs: Any) -> Path | None:
    """Write `output_dir/README.md` once: the kit's card, with the Trainer's training sections below.

    The card of `build_model_card` (how the model was distilled and pruned, measured sparsity,
    `co2_eq_emissions`, the big-vs-small table when a report exists) is followed by the "Training
    procedure" sections (hyperparameters, results, framework versions) of the draft that
    `Trainer.create_model_card` makes, built in memory with the same `TrainingSummary`, so the file
    is written one time, atomically. Before a model is saved in `output_dir`, the draft itself is
    the card (with `co2_eq_emissions` when `energy.json` is there). Runs on the main process only.

    Takes the arguments of `Trainer.create_model_card` (`language`, `license`, `tags`,
    `model_name`, `finetuned_from`, `dataset`, ...); the task is read from the model instead.
    Returns the path written, or None when nothing was (another process, or building the card
    failed: a warning says why, and the caller may fall back to the Trainer's own draft).
    """
    from transformers.utils import logging

    logger = logging.get_logger(__name__)
    options = dict(zip(_CREATE_MODEL_CARD_ARGS, args)) | kwargs
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(trainer.args.output_dir)
    readme = output_dir / "README.md"
    energy = _writes_energy(trainer)
    try:
        from huggingface_hub import ModelCard

        draft = _trainer_draft(trainer, options, ModelCard.load(readme) if readme.is_file() else None)
        if (output_dir / "config.json").is_file():
            text = _kit_card_text(trainer, options, draft, output_dir, energy)
        else:
            logger.warning(f"No model saved in {output_dir} yet, so its card is the Trainer's draft: "
                           "call `trainer.save_model()` before `create_model_card()`.")
            text = _draft_card_text(draft, output_dir, energy)
        atomic_write_text(readme, text)  # never a half-written card
        return readme
    except Exception as error:  # noqa: BLE001 - the card is documentation; the save or upload goes on
        logger.warning(f"Building the hf_bigsmall card for {readme} failed ({error!r}); the Trainer's draft is written instead.")
        return None
