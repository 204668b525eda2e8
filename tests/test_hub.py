import hashlib
import json
import os

import pytest
import torch

from hf_bigsmall.hub.push import HubUploadError, push_folder

from .hub_server import LoopbackHub
from .testing_utils import random_token_batch, tiny_bert_config


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path):
    """A pruned model folder as the kit writes it: weights, tokenizer, masks, energy, report, a checkpoint."""
    from safetensors.torch import save_file
    from transformers import BertForSequenceClassification

    folder = tmp_path / "student"
    model = BertForSequenceClassification(tiny_bert_config())
    model.config.sparsity = {"target_sparsity": 0.5, "structure": "unstructured"}
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    save_file({"bert.encoder.layer.0.intermediate.dense.weight": torch.ones(64, 32)}, folder / "sparsity_masks.safetensors")
    (folder / "energy.json").write_text(json.dumps({"energy_kwh": 1e-6, "co2_grams": 0.0004, "energy_source": "estimate"}))
    (folder / "report.md").write_text("# Big vs small\n")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    return folder


@pytest.fixture
def hub_online(monkeypatch):
    """Let huggingface_hub make requests in this process (the suite runs with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_push_delivers_weights_tokenizer_card_masks_and_report(model_dir, hub_online):
    from transformers import BertForSequenceClassification

    with LoopbackHub() as hub:
        commit = push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)
    files = hub.files("me/tiny-student")

    assert commit.oid == hub.commits[-1]["oid"] and len(hub.commits) == 1
    expected = {"config.json", "model.safetensors", "vocab.txt", "sparsity_masks.safetensors", "energy.json",
                "report.md", "README.md"}
    assert set(files) == expected  # the Trainer checkpoint stays local
    local = _snapshot(model_dir)
    assert {path: hashlib.sha256(data).hexdigest() for path, data in files.items()} == {p: local[p] for p in expected}
    assert b"co2_eq_emissions" in files["README.md"]  # the card was built and written before the upload

    # what the Hub received loads back into the same model
    received = model_dir.parent / "received"
    received.mkdir()
    for path, data in files.items():
        (received / path).write_bytes(data)
    batch = random_token_batch()
    original = BertForSequenceClassification.from_pretrained(model_dir).eval()
    reloaded = BertForSequenceClassification.from_pretrained(received).eval()
    with torch.no_grad():
        torch.testing.assert_close(original(**batch).logits, reloaded(**batch).logits)


def test_a_second_push_leaves_no_model_file_of_the_first_behind(model_dir, tmp_path, hub_online):
    # commits only add: the first push's single weights file would win over the second's shards, and its masks and
    # report would be read as the new model's
    from transformers import BertForSequenceClassification

    newer = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1))
    newer.save_pretrained(tmp_path / "dense", max_shard_size="20KB")
    (tmp_path / "dense" / "vocab.txt").write_text((model_dir / "vocab.txt").read_text())
    with LoopbackHub() as hub:
        push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)
        hub.repos["me/tiny-student"]["NOTES.md"] = b"the user's own file"
        push_folder(tmp_path / "dense", "me/tiny-student", token="hf_loopback", endpoint=hub.url)
    files = hub.files("me/tiny-student")
    assert len(hub.commits) == 2 and "model.safetensors" in hub.commits[1]["deleted"]
    assert not {"model.safetensors", "sparsity_masks.safetensors", "report.md", "energy.json"} & set(files)
    assert set(files) == set(_snapshot(tmp_path / "dense")) | {"README.md", "NOTES.md"}
    received = tmp_path / "received"
    received.mkdir()
    for path, data in files.items():
        (received / path).write_bytes(data)
    reloaded = BertForSequenceClassification.from_pretrained(received).eval()
    assert all(torch.equal(a, b) for a, b in zip(newer.state_dict().values(), reloaded.state_dict().values()))


def test_existing_card_is_uploaded_unchanged(model_dir, hub_online):
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n\n# my own card\n")
    with LoopbackHub() as hub:
        push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)
    assert hub.files("me/tiny-student")["README.md"] == b"---\nlicense: mit\n---\n\n# my own card\n"


def test_failed_upload_leaves_folder_intact_and_says_what_to_retry(model_dir, hub_online):
    (model_dir / "README.md").write_text("---\nlicense: mit\n---\n\n# card\n")
    before = _snapshot(model_dir)
    with LoopbackHub(fail_commits=1) as hub:
        with pytest.raises(HubUploadError, match=r"hf-bigsmall push .* me/tiny-student.*` again") as error:
            push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)
        assert "Nothing in" in str(error.value) and "403" in str(error.value)
        assert hub.files("me/tiny-student") == {} and hub.commits == []
        assert _snapshot(model_dir) == before

        push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)  # the retry lands
        assert "model.safetensors" in hub.files("me/tiny-student")


def test_failed_upload_adds_no_card_and_the_retry_keeps_every_option(model_dir, hub_online, monkeypatch):
    """The folder has no README.md: the card built for the upload must not stay behind when it fails."""
    import shlex

    from hf_bigsmall import cli

    before = _snapshot(model_dir)
    with LoopbackHub(fail_commits=1) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(HubUploadError) as error:
            push_folder(model_dir, "me/tiny-student", token="hf_secret_token", endpoint=hub.url, revision="v2",
                        private=True, commit_message="second try")
        assert _snapshot(model_dir) == before and not (model_dir / "README.md").exists()
        retry = str(error.value).split("run `")[1].split("` again")[0]
        assert "hf_secret_token" not in str(error.value)
        words = shlex.split(retry)
        assert words[:2] == [f"HF_ENDPOINT={hub.url}", "hf-bigsmall"]
        assert words[words.index("--revision") + 1] == "v2" and "--private" in words
        assert words[words.index("--commit_message") + 1] == "second try"

        # the retry, run as written (the token from the environment), lands on the same revision
        monkeypatch.setenv("HF_TOKEN", "hf_loopback")
        argv = [w.replace("$HF_TOKEN", "hf_loopback") for w in words[2:]]
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        assert cli.main(argv) == 0
        assert hub.commits[-1]["revision"] == "v2" and hub.commits[-1]["summary"] == "second try"
    assert (model_dir / "README.md").is_file()  # written once the commit landed, as uploaded


def test_cli_push_offline_fails_without_touching_the_folder(model_dir, capsys):
    from hf_bigsmall import cli

    before = _snapshot(model_dir)  # the suite runs with HF_HUB_OFFLINE=1: the upload cannot start
    assert cli.main(["push", str(model_dir), "me/tiny-student", "--revision", "dev"]) == 1
    assert _snapshot(model_dir) == before and not (model_dir / "README.md").exists()
    assert f"hf-bigsmall push {model_dir} me/tiny-student --revision dev` again" in capsys.readouterr().err


def test_leftovers_of_interrupted_writes_and_imp_rounds_stay_local(model_dir, hub_online):
    (model_dir / "energy.json.tmp").write_text("{")
    (model_dir / "quality_vs_size.partial.png").write_bytes(b"half a png")
    (model_dir / "quality_vs_size.png").write_bytes(b"a png")
    (model_dir / "student.partial").mkdir()
    (model_dir / "student.partial" / "config.json").write_text("{}")
    for name in ("imp-round-0", "imp-round-1"):
        (model_dir / name).mkdir()
        (model_dir / name / "model.safetensors").write_bytes(b"weights")
    (model_dir / "runs").mkdir()
    (model_dir / "runs" / "events.out").write_bytes(b"log")
    with LoopbackHub() as hub:
        push_folder(model_dir, "me/tiny-student", token="hf_loopback", endpoint=hub.url)
    files = set(hub.files("me/tiny-student"))
    assert "quality_vs_size.png" in files and "model.safetensors" in files
    assert not [f for f in files if f.endswith(".tmp") or ".partial" in f or f.startswith(("imp-round-", "runs/",
                                                                                          "checkpoint-"))], files


@pytest.mark.parametrize("repo_id, message", [("not a repo id!", "not a valid Hub repository id")])
def test_bad_input_is_rejected_before_any_request(model_dir, repo_id, message):
    with pytest.raises(ValueError, match=message):
        push_folder(model_dir, repo_id)
    with pytest.raises(ValueError, match="no config.json"):
        push_folder(model_dir.parent, "me/x")


def test_trainer_push_to_hub_reaches_the_loopback_hub(model_dir, hub_online, monkeypatch, tmp_path):
    from huggingface_hub import constants
    from transformers import BertForSequenceClassification, Trainer, TrainingArguments

    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        args = TrainingArguments(output_dir=str(tmp_path / "out"), hub_model_id="me/trained", hub_token="hf_loopback",
                                 report_to="none", use_cpu=True)
        trainer = Trainer(model=BertForSequenceClassification.from_pretrained(model_dir), args=args)
        trainer.push_to_hub()
    assert {"config.json", "model.safetensors", "README.md"} <= set(hub.files("me/trained"))


@pytest.mark.hub
def test_push_to_the_real_hub(model_dir):
    from huggingface_hub import HfApi

    api = HfApi()
    repo_id = os.environ.get("HF_BIGSMALL_TEST_REPO") or f"{api.whoami()['name']}/hf-bigsmall-push-test"
    try:
        push_folder(model_dir, repo_id, private=True)
        assert {"config.json", "model.safetensors", "README.md"} <= set(api.list_repo_files(repo_id))
    finally:
        api.delete_repo(repo_id, missing_ok=True)
