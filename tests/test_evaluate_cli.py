"""evaluate() and the command line on the real SmolLM2-135M-Instruct."""

import json

import pytest
import torch

from itda_lens.activations import TransformerLensSource
from itda_lens.build import build
from itda_lens.cli import main
from itda_lens.evaluate import evaluate
from itda_lens.metrics import next_token_losses
from itda_lens.text import file_documents, select_split, token_batches

HOOK = "blocks.4.hook_resid_post"


@pytest.fixture(scope="module")
def small_itda(bridge, tokenizer, wikitext):
    batches = token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 64, 8, 2000)
    return build(TransformerLensSource(bridge, [HOOK]), batches, k=16, threshold=0.15, progress=False).dictionaries[HOOK]


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
    main(["eval", str(out), "--text-file", str(wikitext), "--max-tokens", "300", "--seq-len", "64", "--json", "--no-progress"])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = {"n_atoms", "k", "tokens", "fvu", "mse", "cosine", "l0", "ce_loss_clean", "ce_loss_spliced", "ce_loss_zero", "ce_loss_score", "delta_lm_loss"}
    assert keys <= set(evaluated)
    assert evaluated["n_atoms"] == trained["n_atoms"] and evaluated["tokens"] == 300
    with pytest.raises(SystemExit, match="already holds a dictionary"):
        main(["train", "--hook", HOOK, "--text-file", str(wikitext), "--out", str(out)])


def test_command_errors_name_the_fix(tmp_path, wikitext):
    with pytest.raises(SystemExit, match="parent folder"):
        main(["train", "--hook", HOOK, "--out", str(tmp_path / "no" / "such")])
    with pytest.raises(SystemExit, match="Close matches: blocks.4.hook_resid_post"):
        main(["train", "--hook", "blocks.4.hook_resid_psot", "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="no text file"):
        main(["train", "--hook", HOOK, "--text-file", str(tmp_path / "none.txt"), "--out", str(tmp_path / "d")])
