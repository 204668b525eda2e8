"""The kit meets the Trainer through its documented events and one seam, never through its internals."""

import re
from pathlib import Path

import pytest
from transformers import Trainer

import hf_bigsmall
from hf_bigsmall import BigSmallTrainer, EnergyCallback, MagnitudePruningCallback
from tests.pruning_utils import pruning_trainer, tiny_bert, training_args

PACKAGE = Path(hf_bigsmall.__file__).parent


def test_no_frame_inspection_or_method_rebinding_in_the_package():
    pattern = re.compile(r"f_locals|currentframe|_getframe|types\.MethodType|setattr\(trainer")
    hits = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
            for path in sorted(PACKAGE.rglob("*.py"))
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []


@pytest.mark.parametrize("trainer_class", [Trainer, BigSmallTrainer])
def test_nothing_of_the_trainer_or_the_model_is_replaced(tmp_path, trainer_class):
    model = tiny_bert()
    trainer = pruning_trainer(model, training_args(tmp_path, max_steps=2),
                              MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot"), trainer_class=trainer_class)
    trainer.add_callback(EnergyCallback())
    trainer.train()
    trainer.evaluate(trainer.train_dataset)
    trainer.save_model()
    # every method is the class's own: no instance attribute shadows one
    assert not [name for name, value in vars(trainer).items() if callable(value) and hasattr(type(trainer), name)]
    assert not [name for name, value in vars(model).items() if callable(value) and hasattr(type(model), name)]
    # the folder is complete either way: zeros, the config block and the masks
    assert (tmp_path / "sparsity_masks.safetensors").is_file()
    assert "sparsity" in model.config.to_dict()


def test_the_seam_saves_masks_into_any_folder_and_a_plain_trainer_into_output_dir(tmp_path):
    for trainer_class, expected in ((Trainer, False), (BigSmallTrainer, True)):
        out = tmp_path / trainer_class.__name__
        trainer = pruning_trainer(tiny_bert(), training_args(out / "run", max_steps=2),
                                  MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot"),
                                  trainer_class=trainer_class)
        trainer.train()
        trainer.save_model(str(out / "elsewhere"))
        assert (out / "run" / "sparsity_masks.safetensors").is_file()  # the end of training, from the events
        assert (out / "elsewhere" / "sparsity_masks.safetensors").is_file() == expected


@pytest.mark.parametrize("trainer_base", ["Trainer", "Seq2SeqTrainer"])
def test_the_mixin_after_a_trainer_in_the_bases_is_refused_naming_the_fix(trainer_base):
    import transformers

    from hf_bigsmall import BigSmallTrainerMixin

    base = getattr(transformers, trainer_base)
    with pytest.raises(TypeError, match=rf"class MyTrainer\(BigSmallTrainerMixin, {trainer_base}\)"):
        type("MyTrainer", (base, BigSmallTrainerMixin), {})
    # the order the README gives, and a subclass of a kit trainer listing the mixin again, are fine
    mixed = type("MyTrainer", (BigSmallTrainerMixin, base), {})
    assert mixed.save_model is BigSmallTrainerMixin.save_model
    again = type("MyDistillationTrainer", (hf_bigsmall.DistillationTrainer, BigSmallTrainerMixin), {})
    assert again.train is BigSmallTrainerMixin.train
