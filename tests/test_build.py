import json

import pytest
import torch

from itda_lens.core import build as build_module
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.build import DictionaryBuilder, build, checkpoint_folders, find_checkpoint
from itda_lens.core.config import BuildSettings
from itda_lens.core.provenance import document_id
from itda_lens.core.text import file_documents, select_split, token_batches

HOOK = "blocks.3.hook_resid_post"


def test_no_duplicates_within_or_across_batches():
    torch.manual_seed(0)
    x = torch.randn(40, 16)
    batch = torch.cat([x, x[:10] * 3.0, -x[:5]])
    builder = DictionaryBuilder(16, BuildSettings(k=4, threshold=0.2))
    added, _ = builder.update(batch)
    assert added == [i for i in added if i < 40]
    assert builder.update(batch)[0] == []
    units = builder.atoms
    cos = units @ units.T - torch.eye(len(units))
    assert cos.abs().max() < 1 - 1e-4


def test_threshold_is_scale_and_width_free():
    torch.manual_seed(0)
    x = torch.randn(300, 64)
    small, large = DictionaryBuilder(64, BuildSettings(k=8, threshold=0.3)), DictionaryBuilder(64, BuildSettings(k=8, threshold=0.3))
    assert small.update(x)[0] == large.update(x * 1000.0)[0]
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
        BuildSettings(threshold=3.0)


def test_stopping_early_leaves_the_dictionary_unchanged(monkeypatch):
    # Tokens near the span of a few directions stop their pursuit early; the rest run all
    # k steps. Without stopping, the same atoms must be chosen.
    torch.manual_seed(0)
    directions = torch.randn(24, 64)
    x = torch.randn(1200, 24) @ directions + 0.25 * torch.randn(1200, 64)
    stopping = DictionaryBuilder(64, BuildSettings(k=8, threshold=0.2, step_tokens=100))
    added, worse = stopping.update(x)
    calls = []
    original = build_module.pursuit

    def without_stopping(*args, tolerance=None, **kwargs):
        idx, val = original(*args, tolerance=tolerance, **kwargs)
        calls.append(((idx[:, -1] == idx[:, 0]) & (val[:, -1] == 0)).sum())
        return original(*args, **kwargs)

    monkeypatch.setattr(build_module, "pursuit", without_stopping)
    full = DictionaryBuilder(64, BuildSettings(k=8, threshold=0.2, step_tokens=100))
    assert full.update(x) == (added, worse)
    assert sum(calls) > 100  # tokens did stop
    assert 0 < worse < 1 and len(added) > 24
    assert torch.equal(full.atoms, stopping.atoms)


def test_a_gram_budget_changes_the_speed_not_the_dictionary():
    # Growing well past what 64 rows hold: rows are cached, evicted and recomputed,
    # the buffer is made again as the dictionary outgrows it.
    torch.manual_seed(0)
    x = torch.randn(1500, 64)
    settings = BuildSettings(k=8, threshold=0.3, step_tokens=100)
    budgets = (1 << 30, 64 * 1024 * 4, 1024 * 1024, 0)  # every row; 64 rows; every row in int8; none
    whole, cached, quantized, dense = (DictionaryBuilder(64, settings, gram_bytes=budget) for budget in budgets)
    added = whole.update(x)
    assert whole._gram.complete and whole.n_atoms > 300
    assert cached.update(x) == added and torch.equal(cached.atoms, whole.atoms)
    assert not cached._gram.complete and len(cached._gram.buffer) <= 64
    assert quantized.update(x) == added and torch.equal(quantized.atoms, whole.atoms)
    assert quantized._gram.quantized and quantized._gram.complete
    assert dense.update(x)[0] == added[0] and dense._gram is None


def test_max_atoms_and_bad_activations():
    builder = DictionaryBuilder(8, BuildSettings(k=2, threshold=0.01, max_atoms=5))
    builder.update(torch.randn(100, 8))
    assert builder.n_atoms == 5 and builder.full
    x = torch.randn(4, 8)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match="1 of 4 activations contain NaN or inf"):
        DictionaryBuilder(8).update(x)
    with pytest.raises(ValueError, match="width 9"):
        DictionaryBuilder(8).update(torch.randn(3, 9))


def _batches(tokenizer, wikitext, tokens=1500):
    return token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 64, 4, tokens)


@pytest.fixture(scope="module")
def built(bridge, tokenizer, wikitext):
    source = TransformerLensSource(bridge, [HOOK, "blocks.5.hook_resid_post"])
    return build(source, _batches(tokenizer, wikitext), BuildSettings(k=8, threshold=0.2), progress=False)


def test_build_several_hooks_with_provenance(built, tokenizer, wikitext):
    assert set(built.dictionaries) == {HOOK, "blocks.5.hook_resid_post"}
    itda = built.dictionaries[HOOK]
    assert itda.config.hook == HOOK and itda.config.model == "smollm2-135m-instruct"
    assert built.tokens == 1500 and 8 <= itda.n_atoms < 1500
    provenance = itda.provenance
    assert (provenance.doc != -1).all() and (provenance.token_id != tokenizer.bos_token_id).all()
    assert len(provenance.keys("span")) == itda.n_atoms
    documents = {document_id(text): text for text in file_documents(wikitext)}
    for i in range(0, itda.n_atoms, 37):
        text = documents[int(provenance.doc[i])]
        assert provenance.token[i] == text[provenance.char_start[i] : provenance.char_end[i]]


def test_atoms_are_the_activations_they_claim(built, bridge, tokenizer, wikitext):
    itda = built.dictionaries[HOOK]
    batch = next(iter(_batches(tokenizer, wikitext)))
    acts = TransformerLensSource(bridge, [HOOK])(batch.tokens)[HOOK]
    first = acts[0, 1]
    torch.testing.assert_close(itda.atoms[0], first / first.norm(), atol=1e-5, rtol=1e-5)


SETTINGS = BuildSettings(k=8, threshold=0.2, step_tokens=64)
TWO_HOOKS = [HOOK, "blocks.5.hook_resid_post"]


@pytest.fixture(scope="module")
def whole(bridge, tokenizer, wikitext):
    """Two hooks built from 1,200 tokens without interruption."""
    return build(TransformerLensSource(bridge, TWO_HOOKS), _batches(tokenizer, wikitext, 1200), settings=SETTINGS, progress=False).dictionaries


def _interrupted(batches, after):
    for number, batch in enumerate(batches):
        if number == after:
            raise KeyboardInterrupt
        yield batch


def _assert_same(dictionaries, whole):
    for hook, itda in dictionaries.items():
        assert torch.equal(itda.atoms, whole[hook].atoms)
        assert torch.equal(itda.provenance.doc, whole[hook].provenance.doc)
        assert itda.config.build["history"] == whole[hook].config.build["history"]


def test_interrupted_build_resumes_to_the_same_result(bridge, tokenizer, wikitext, tmp_path, whole):
    source = TransformerLensSource(bridge, TWO_HOOKS)
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        build(source, _interrupted(_batches(tokenizer, wikitext, 1200), 3), checkpoint_dir=checkpoint, checkpoint_every=2, settings=SETTINGS, progress=False)
    assert json.loads((checkpoint / "state.json").read_text())["state"]["batches"] == 3
    resumed = build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    _assert_same(resumed.dictionaries, whole)
    assert resumed.dictionaries[HOOK].config.build["tokens"] == 1200
    assert not any(folder.exists() for folder in checkpoint_folders(checkpoint))
    with pytest.raises(KeyboardInterrupt):
        build(source, _interrupted(_batches(tokenizer, wikitext, 1200), 2), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    with pytest.raises(ValueError, match="made with k=8, step_tokens=64, not k=9, step_tokens=256"):
        build(source, _batches(tokenizer, wikitext, 1200), BuildSettings(k=9, threshold=0.2), checkpoint_dir=checkpoint, progress=False)


def test_resume_refuses_other_text(bridge, tokenizer, wikitext, tmp_path):
    source = TransformerLensSource(bridge, [HOOK])
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        build(source, _interrupted(_batches(tokenizer, wikitext, 1200), 2), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    state = (checkpoint / "state.json").read_bytes()
    heldout = token_batches(select_split(file_documents(wikitext), "heldout"), tokenizer, 64, 4, 1200)
    longer = token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 65, 4, 1200)
    shorter = _batches(tokenizer, wikitext, 200)
    for batches in (heldout, longer, shorter):
        with pytest.raises(ValueError, match="differs from the text the checkpoint"):
            build(source, batches, checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
        assert (checkpoint / "state.json").read_bytes() == state


def test_interruption_inside_a_batch_keeps_the_finished_batches(bridge, tokenizer, wikitext, tmp_path, whole, monkeypatch):
    # Ctrl-C after the first hook of batch 4 took its atoms, before the second did.
    calls = []
    update = DictionaryBuilder.update

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return update(self, x)

    monkeypatch.setattr(DictionaryBuilder, "update", interrupted)
    source = TransformerLensSource(bridge, TWO_HOOKS)
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    monkeypatch.undo()
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["state"]["batches"] == 3 and all(len(rows) == 3 for rows in saved["state"]["history"].values())
    _assert_same(build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False).dictionaries, whole)


def test_a_checkpoint_being_replaced_is_not_lost(bridge, tokenizer, wikitext, tmp_path, whole):
    # The build stopped after moving the complete checkpoint aside, before moving the new one in.
    source = TransformerLensSource(bridge, TWO_HOOKS)
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):
        build(source, _interrupted(_batches(tokenizer, wikitext, 1200), 2), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    current, partial, previous = checkpoint_folders(checkpoint)
    current.replace(previous)
    partial.mkdir()
    (partial / "hook0").mkdir()  # a next checkpoint, half written
    assert find_checkpoint(checkpoint) == previous
    _assert_same(build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False).dictionaries, whole)
    assert not any(folder.exists() for folder in checkpoint_folders(checkpoint))


def test_a_failed_first_batch_leaves_no_checkpoint(bridge, tokenizer, wikitext, tmp_path):
    source = TransformerLensSource(bridge, ["blocks.0.attn.hook_pattern"])
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(ValueError, match=r"not \[batch, pos, d_model\]"):
        build(source, _batches(tokenizer, wikitext, 200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    assert find_checkpoint(checkpoint) is None and not checkpoint.exists()


def test_a_kept_checkpoint_finishes_without_reading_activations(bridge, tokenizer, wikitext, tmp_path, whole):
    calls = []

    class Counted(TransformerLensSource):
        def __call__(self, tokens):
            calls.append(1)
            return super().__call__(tokens)

    source = Counted(bridge, TWO_HOOKS)
    checkpoint = tmp_path / "ckpt"
    first = build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, keep_checkpoint=True, settings=SETTINGS, progress=False)
    assert find_checkpoint(checkpoint) == checkpoint and calls
    calls.clear()
    again = build(source, _batches(tokenizer, wikitext, 1200), checkpoint_dir=checkpoint, settings=SETTINGS, progress=False)
    assert not calls
    _assert_same(first.dictionaries, whole)
    _assert_same(again.dictionaries, whole)
    assert not checkpoint.exists()


def test_unknown_hook_lists_close_matches(bridge):
    with pytest.raises(ValueError, match="blocks.3.hook_resid_post"):
        TransformerLensSource(bridge, ["blocks.3.hook_resid_pots"])


def test_tiny_corpus_is_refused(bridge, tokenizer):
    source = TransformerLensSource(bridge, [HOOK])
    with pytest.raises(ValueError, match="fewer than k=40"):
        build(source, token_batches(["Tiny text."], tokenizer, 16, 2), progress=False)
