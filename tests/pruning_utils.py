"""Helpers shared by the pruning tests: a tiny labelled token dataset and a Trainer factory."""

from __future__ import annotations

import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from tests.testing_utils import TINY_VOCAB, tiny_bert_config


class TokenClassificationData(torch.utils.data.Dataset):
    """Random token sequences whose label is the parity of the first token: learnable, fixed by `seed`."""

    def __init__(self, size: int = 32, seq_len: int = 12, vocab_size: int = TINY_VOCAB, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, vocab_size, (size, seq_len), generator=generator)

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, index):
        ids = self.input_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": int(ids[0]) % 2}


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config())


def training_args(output_dir, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(output_dir), max_steps=8, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=2, save_strategy="no", report_to="none", seed=0, use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def pruning_trainer(model, args, callback, dataset=None, trainer_class=Trainer, **kwargs) -> Trainer:
    return trainer_class(model=model, args=args, train_dataset=dataset or TokenClassificationData(), callbacks=[callback],
                         **kwargs)
