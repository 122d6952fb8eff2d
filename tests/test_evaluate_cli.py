"""evaluate() and the command line on the real SmolLM2-135M-Instruct."""

import errno
import json

import pytest
import torch

from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.build import build
from itda_lens.core.config import BuildSettings
from itda_lens.core.itda import ITDA
from itda_lens.core.metrics import next_token_losses
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools import cli
from itda_lens.tools.cli import main
from itda_lens.tools.evaluate import evaluate

HOOK = "blocks.4.hook_resid_post"


@pytest.fixture(scope="module")
def small_itda(bridge, tokenizer, wikitext):
    batches = token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 64, 8, 2000)
    return build(TransformerLensSource(bridge, [HOOK]), batches, BuildSettings(k=16, threshold=0.15), progress=False).dictionaries[HOOK]


def test_spliced_loss_matches_a_plain_pytorch_hook(bridge, tokenizer, wikitext, small_itda):
    batch = next(iter(token_batches(select_split(file_documents(wikitext), "heldout"), tokenizer, 64, 4, 200)))
    result = evaluate(bridge, small_itda, [batch], progress=False)
    hf = bridge.original_model
    mask = batch.mask

    def splice(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        new[mask] = small_itda(hidden[mask])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = hf.model.layers[4].register_forward_hook(splice)
    try:
        with torch.no_grad():
            logits = hf(batch.tokens).logits
    finally:
        handle.remove()
    want = next_token_losses(logits, batch.tokens, mask).double().mean().item()
    assert abs(result["ce_loss_spliced"] - want) < 1e-4
    assert result["ce_loss_clean"] < result["ce_loss_spliced"] < result["ce_loss_zero"]
    assert 0 < result["fvu"] < 1 and result["l0"] <= 16


def test_train_and_eval_commands(tmp_path, wikitext, capsys):
    out = tmp_path / "dict"
    main(["train", "--hook", HOOK, "--text-file", str(wikitext), "--max-tokens", "1500", "--k", "16",
          "--threshold", "0.3", "--max-atoms", "1500", "--seq-len", "64", "--out", str(out), "--json", "--no-progress"])
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(trained) >= {"n_atoms", "tokens", "seconds_forward", "seconds_dictionary"}
    assert trained["tokens"] == 1500 and 16 <= trained["n_atoms"] < 1500
    assert (out / "growth.png").stat().st_size > 1000
    assert sorted(path.name for path in out.iterdir()) == ["atoms.safetensors", "config.json", "growth.png", "provenance.json"]
    main(["eval", str(out), "--text-file", str(wikitext), "--max-tokens", "300", "--seq-len", "64", "--json", "--no-progress"])
    printed = capsys.readouterr().out.strip().splitlines()
    evaluated = json.loads(printed[-1])
    keys = {"n_atoms", "k", "tokens", "documents", "split", "corpus", "fvu", "mse", "cosine", "l0", "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_score", "delta_lm_loss"}
    assert keys <= set(evaluated)
    assert evaluated["n_atoms"] == trained["n_atoms"] and evaluated["tokens"] == 300
    assert evaluated["split"] == "heldout" and evaluated["corpus"] == str(wikitext) and evaluated["documents"] >= 1
    assert printed[0] == f"evaluated on 300 tokens of {evaluated['documents']} documents, the heldout split of {wikitext}"
    with pytest.raises(SystemExit) as refused:
        main(["train", "--hook", HOOK, "--text-file", str(wikitext), "--out", str(out)])
    assert refused.value.code == 2 and "already holds a dictionary; pass --overwrite" in capsys.readouterr().err


def test_command_errors_name_the_fix(tmp_path, capsys):
    for argv, message in [
        (["train", "--hook", HOOK, "--out", str(tmp_path / "no" / "such")], "does not exist; create it first"),
        (["train", "--hook", "blocks.4.hook_resid_psot", "--out", str(tmp_path / "d"), "--no-progress"], "Close matches: blocks.4.hook_resid_post"),
        (["train", "--hook", HOOK, "--text-file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "d")], "--text-file"),
    ]:
        with pytest.raises(SystemExit) as failed:
            main(argv)
        err = capsys.readouterr().err
        assert failed.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_an_unexpected_error_is_one_line_too(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(cli, "_eval", broken)
    with pytest.raises(SystemExit) as failed:
        main(["eval", str(tmp_path)])
    assert failed.value.code == 2
    assert capsys.readouterr().err == "error: RuntimeError: something nobody expected (rerun with --debug for the traceback)\n"
    monkeypatch.setenv("ITDA_LENS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="nobody expected"):
        main(["eval", str(tmp_path)])


SMALL_BUILD = ["--hook", "blocks.2.hook_resid_post", "--max-tokens", "600", "--seq-len", "32", "--batch-size", "2",
               "--k", "4", "--threshold", "0.3", "--checkpoint-every", "2", "--split", "all", "--no-progress"]


def _fail(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as failed:
        main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return failed.value.code, err


def test_train_survives_ctrl_c_a_changed_text_and_a_failed_save(tmp_path, wikitext, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(list(file_documents(wikitext))[:6]))
    main(["train", *SMALL_BUILD, "--text-file", str(corpus), "--out", str(tmp_path / "whole")])
    whole = ITDA.load(tmp_path / "whole")

    # Ctrl-C in the fifth batch, with the text given by a relative path
    calls = []
    forward = TransformerLensSource.__call__

    def counted(self, tokens):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return forward(self, tokens)

    monkeypatch.setattr(TransformerLensSource, "__call__", counted)
    monkeypatch.chdir(tmp_path)
    interrupt_at = 5
    out = tmp_path / "run"
    argv = ["train", *SMALL_BUILD, "--out", str(out)]
    status, err = _fail([*argv, "--text-file", "corpus.txt"], capsys)
    checkpoint = out / ".checkpoint"
    assert status == 130 and err == f"error: the build was interrupted; its checkpoint is at {checkpoint}: rerun the same command to resume.\n"
    state = (checkpoint / "state.json").read_bytes()
    assert json.loads(state)["state"]["batches"] == 4
    interrupt_at = None

    # the text changed since: refused, the checkpoint untouched
    original = corpus.read_text()
    corpus.write_text(original.replace(" the ", " a ", 1))
    status, err = _fail([*argv, "--text-file", str(corpus)], capsys)
    assert status == 2 and "differs from the text the checkpoint" in err and (checkpoint / "state.json").read_bytes() == state
    corpus.write_text(original)

    # the same text by its absolute path resumes after batch 4; the disk fills while saving
    save = ITDA.save

    def disk_full(self, directory):
        if ".saving" in str(directory):
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(self, directory)

    monkeypatch.setattr(ITDA, "save", disk_full)
    calls.clear()
    status, err = _fail([*argv, "--text-file", str(corpus)], capsys)
    assert status == 2 and "No space left on device" in err and f"kept in {checkpoint}" in err
    batches = json.loads((checkpoint / "state.json").read_text())["state"]["batches"]
    assert len(calls) == batches - 4 > 0
    assert not (out / "config.json").exists()
    monkeypatch.setattr(ITDA, "save", save)

    # the same command again saves, without a forward pass, the dictionary an uninterrupted build gives
    calls.clear()
    main([*argv, "--text-file", str(corpus)])
    assert not calls
    resumed = ITDA.load(out)
    assert torch.equal(resumed.atoms, whole.atoms) and torch.equal(resumed.provenance.doc, whole.provenance.doc)
    assert resumed.config.build["history"] == whole.config.build["history"]
    assert sorted(path.name for path in out.iterdir()) == ["atoms.safetensors", "config.json", "growth.png", "provenance.json"]


def test_overwrite_replaces_only_what_train_writes(tmp_path, wikitext, capsys):
    out = tmp_path / "out"
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    out.mkdir()
    old = ITDA.from_atoms(torch.randn(5, 576), k=2, hook=hooks[1]).save(out / hooks[1])
    (out / "notes.txt").write_text("mine")
    (old / "my-analysis.txt").write_text("also mine")
    argv = ["train", "--hook", hooks[0], "--hook", hooks[1], "--text-file", str(wikitext), "--max-tokens", "200",
            "--seq-len", "32", "--k", "4", "--out", str(out), "--no-progress"]
    status, err = _fail(argv, capsys)
    assert status == 2 and "already holds a dictionary" in err
    main([*argv, "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine" and (old / "my-analysis.txt").read_text() == "also mine"
    for hook in hooks:
        itda = ITDA.load(out / hook)
        assert itda.config.hook == hook and itda.config.build["tokens"] == 200
    assert sorted(path.name for path in out.iterdir()) == [*hooks, "growth.png", "notes.txt"]
