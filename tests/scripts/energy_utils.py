"""Data shared by the energy tests and their two-process script."""

import torch

from tests.testing_utils import TINY_VOCAB


class TinyClassificationData(torch.utils.data.Dataset):
    """`size` random token sequences with binary labels, fixed by a seed."""

    def __init__(self, size: int = 32, seq_len: int = 8):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(1, TINY_VOCAB, (size, seq_len), generator=generator)
        self.labels = torch.randint(0, 2, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}
