import pytest
import torch
from datasets import Dataset
from transformers import BertForSequenceClassification

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from hf_bigsmall.data import ShuffledLengthGroupedSampler, length_grouped_batches
from tests.testing_utils import pad_rows, requires_minilm, requires_scattertext, tiny_bert_config


def _lengths(count=200, seed=0):
    return torch.randint(2, 64, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def _padded(batches, lengths):
    return sum(max(lengths[index] for index in batch) * len(batch) for batch in batches)


@pytest.mark.parametrize("count, batch_size", [(200, 8), (203, 8), (7, 8), (64, 1)])
def test_every_row_comes_once_in_whole_batches_but_the_last(count, batch_size):
    lengths = _lengths(count)
    batches = length_grouped_batches(lengths, batch_size, generator=torch.Generator().manual_seed(0))
    assert sorted(index for batch in batches for index in batch) == list(range(count))
    assert all(len(batch) == batch_size for batch in batches[:-1]) and 0 < len(batches[-1]) <= batch_size


def test_batches_pad_little_and_come_in_random_order():
    lengths = _lengths(1600)
    generator = torch.Generator().manual_seed(0)
    grouped = length_grouped_batches(lengths, 16, generator=generator)
    random_order = torch.randperm(len(lengths), generator=generator).tolist()
    random_batches = [random_order[start:start + 16] for start in range(0, len(lengths), 16)]
    assert _padded(grouped, lengths) < 0.65 * _padded(random_batches, lengths)
    # not longest first, as the Trainer's LengthGroupedSampler orders each window: the batch maxima are shuffled
    maxima = [max(lengths[index] for index in batch) for batch in grouped]
    descents = sum(later <= earlier for earlier, later in zip(maxima, maxima[1:]))
    assert 0.3 < descents / (len(maxima) - 1) < 0.7


def test_the_same_seed_and_epoch_give_the_same_batches_and_another_epoch_others():
    lengths = _lengths(300)

    def draw(seed):
        return length_grouped_batches(lengths, 8, generator=torch.Generator().manual_seed(seed))

    assert draw(1) == draw(1) and draw(1) != draw(2)
    sampler = ShuffledLengthGroupedSampler(lengths, 8, seed=5)
    first = list(sampler)
    # its own generator: torch's global random state (dropout, other processes' draws) does not change it
    torch.rand(100)
    assert len(sampler) == 300 and list(sampler) == first == list(ShuffledLengthGroupedSampler(lengths, 8, seed=5))
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == sorted(first)
    assert list(ShuffledLengthGroupedSampler(lengths, 8, seed=6)) != first


def test_the_batch_with_the_longest_row_comes_first():
    # as the Trainer's sampler does: a batch too large for memory fails at the first step, not hours in
    lengths = _lengths(500)
    for epoch in range(5):
        sampler = ShuffledLengthGroupedSampler(lengths, 16, seed=0)
        sampler.set_epoch(epoch)
        assert max(lengths[index] for index in list(sampler)[:16]) == max(lengths)


@pytest.mark.parametrize("lengths, batch_size, window, message", [
    ([], 8, None, "dataset is empty"),
    ([3, 4], 0, None, "batch_size must be >= 1"),
    ([3, 4], 2, 0, "window_batches must be >= 1"),
])
def test_bad_settings_are_refused_when_the_sampler_is_made(lengths, batch_size, window, message):
    with pytest.raises(ValueError, match=message):
        ShuffledLengthGroupedSampler(lengths, batch_size, window)


def test_shuffle_length_groups_without_group_by_length_is_refused(tmp_path):
    with pytest.raises(ValueError, match="set train_sampling_strategy='group_by_length'"):
        DistillationConfig(output_dir=str(tmp_path), shuffle_length_groups=True, report_to="none", use_cpu=True)


def _train_and_record(tmp_path, resume=None, **sampling):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = make_student(teacher, num_layers=1)
    lengths = _lengths(96, seed=3)
    # each row names itself by its first token
    rows = [[5 + index] + [5 + (index * 7 + position) % 90 for position in range(1, length)]
            for index, length in enumerate(lengths)]
    dataset = Dataset.from_dict({"input_ids": rows, "labels": [index % 2 for index in range(len(rows))]})
    seen = []

    def collate(features):
        seen.append(sorted((len(feature["input_ids"]), feature["input_ids"][0] - 5) for feature in features))
        return pad_rows(features)

    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=12, report_to="none",
                    use_cpu=True, save_strategy="no", seed=0, learning_rate=1e-4)
    args = DistillationConfig(**{**settings, **sampling})
    DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                        data_collator=collate).train(resume_from_checkpoint=resume)
    return seen[-args.max_steps:], lengths  # the trainer may collate a few rows first to check them


def test_distillation_trainer_draws_shuffled_length_groups(tmp_path):
    seen, lengths = _train_and_record(tmp_path, train_sampling_strategy="group_by_length", shuffle_length_groups=True)
    assert sorted(row for batch in seen for _, row in batch) == list(range(len(lengths)))  # one epoch, every row once
    random_spread = max(lengths) - min(lengths)
    assert all(batch[-1][0] - batch[0][0] < random_spread / 2 for batch in seen)  # each batch of similar lengths
    assert seen[0][-1][0] == max(lengths)  # the longest batch first
    # the Trainer's own sampler: each window of batches longest first; here the maxima go up and down
    plain, _ = _train_and_record(tmp_path / "plain", train_sampling_strategy="group_by_length")
    maxima = [batch[-1][0] for batch in seen]
    assert [batch[-1][0] for batch in plain] != maxima and maxima != sorted(maxima, reverse=True)


@requires_minilm
@requires_scattertext
def test_real_reviews_in_shuffled_length_groups_pad_to_about_half():
    # the quickstart's data: Rotten Tomatoes training reviews through the embedded MiniLM tokenizer, batches of 32
    from transformers import AutoTokenizer

    from hf_bigsmall import assets
    from hf_bigsmall.tasks.text_classification import load_classification_dataset

    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_path())
    train = load_classification_dataset(tokenizer, assets.ROTTEN_TOMATOES, max_length=64)["train"]
    lengths = [len(ids) for ids in train["input_ids"]]
    generator = torch.Generator().manual_seed(0)
    grouped = length_grouped_batches(lengths, 32, generator=generator)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    random_batches = [order[start:start + 32] for start in range(0, len(order), 32)]
    assert len(lengths) > 3000
    assert _padded(grouped, lengths) < 0.6 * _padded(random_batches, lengths)
    assert sum(lengths) / _padded(grouped, lengths) > 0.9


def test_a_run_resumed_in_its_second_epoch_trains_on_the_batches_it_would_have(tmp_path):
    # 96 rows in batches of 8: 12 steps an epoch; 18 steps, saved at step 15 (3 steps into the second epoch)
    sampling = dict(train_sampling_strategy="group_by_length", shuffle_length_groups=True, max_steps=18,
                    save_strategy="steps", save_steps=15)
    whole, _ = _train_and_record(tmp_path / "whole", **sampling)
    _train_and_record(tmp_path / "cut", **sampling)
    resumed, _ = _train_and_record(tmp_path / "cut", resume=str(tmp_path / "cut" / "out" / "checkpoint-15"),
                                   **sampling)
    assert resumed[-3:] == whole[-3:]
    second_epoch = [row for batch in whole[12:15] + resumed[-3:] for _, row in batch]  # steps 13-15, then 16-18
    assert len(second_epoch) == len(set(second_epoch))  # no row twice within the resumed epoch


@pytest.mark.multiprocess
def test_two_processes_share_every_epoch_between_them(tmp_path):
    import json

    from tests.testing_utils import REPO_ROOT, run_accelerate

    output = tmp_path / "result.json"
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "shuffled_groups_ddp.py", str(output), timeout=300)
    result = json.loads(output.read_text())
    assert result["world_size"] == 2
    # resumed 3 steps into the second epoch, each process trains on the batches the whole run did
    assert result["resumed_as_whole"] == [True, True]
    for rows in result["epochs"]:  # every row once per epoch, on one process or the other
        assert sorted(rows) == list(range(64))
    # each step's rows on both processes come from one length group, never from two: fewer than half the range
    assert sum(result["spreads"]) / len(result["spreads"]) < result["length_range"] / 2, result["spreads"]


def test_row_lengths_follow_a_shuffled_view_and_prefer_the_length_column():
    from hf_bigsmall.distillation.trainer import _row_lengths

    lengths = _lengths(50)
    data = Dataset.from_dict({"input_ids": [[1] * length for length in lengths]})
    view = data.shuffle(seed=0).select(range(20))  # an indices mapping over the Arrow table
    assert _row_lengths(view, "length") == [len(ids) for ids in view["input_ids"]] != lengths[:20]
    assert _row_lengths(data.with_format("numpy"), "length") == lengths
    declared = data.add_column("length", [7] * 50)
    assert _row_lengths(declared, "length") == [7] * 50
    declared.set_format("torch", columns=["input_ids"])  # a format that leaves the length column out
    assert _row_lengths(declared, "length") == [7] * 50
    assert _row_lengths(Dataset.from_dict({"text": ["a"]}), "length") is None
