"""Layer x layer comparison: matching accuracy by hand, and two tiny models end to end
(same tokenizer, two tokenizers, saved dictionaries, the ``compare`` command)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from itda_lens.core.config import BuildSettings
from itda_lens.core.itda import ITDA
from itda_lens.core.provenance import Provenance
from itda_lens.core.text import file_documents, token_batches
from itda_lens.tools.compare import (
    ALL_MEASURES,
    JACCARD,
    RARITY_JACCARD,
    compare_dictionaries,
    compare_models,
    expected_jaccard,
    jaccard,
    jaccard_matrix,
    jaccard_null_matrix,
    layer_similarities,
    matched,
    matching_accuracy,
    model_layers,
    model_similarities,
    rarity_jaccard_matrix,
    rarity_weights,
    ruzicka,
)
from itda_lens.tools.compare.intervals import accuracy_draws, accuracy_interval, difference_interval, document_counts
from itda_lens.tools.compare.layers import depth_targets, ordered_pairs
from itda_lens.tools.compare.occurrences import shared_rows, trimmed_span

# ------------------------------------------------------------------- matching by hand

S_AB = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1], [0.0, 0.7, 0.6]])
S_AA = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])


def test_matched_counts_ties_as_shares_and_nan_never_wins():
    assert matched(S_AB).tolist() == [1.0, 1.0, 0.0]
    assert matched(S_AA).tolist() == [1.0, 1.0, 0.5]
    with_nan = torch.tensor([[float("nan"), 0.1], [0.3, float("nan")]])
    assert matched(with_nan).tolist() == [0.0, 0.0]
    assert matched(torch.full((2, 2), float("nan"))).tolist() == [0.0, 0.0]


def test_matching_accuracy_cross_model_and_with_self_pairs():
    # (a, b): rows 1, 1, 0; (b, a) = S_AB.T: rows 1, 1, 1 (0.8 > 0.7); (a, a): 1, 1, 1/2.
    matrices = {("a", "b"): S_AB, ("a", "a"): S_AA}
    assert matching_accuracy(matrices) == pytest.approx(5 / 6)
    assert matching_accuracy(matrices, include_self=True) == pytest.approx((5 + 2.5) / 9)


def test_a_pair_given_both_ways_is_not_transposed():
    other = torch.eye(3)
    pairs = ordered_pairs({("a", "b"): S_AB, ("b", "a"): other}, include_self=False)
    assert set(pairs) == {("a", "b"), ("b", "a")} and pairs[("b", "a")] is other
    assert matching_accuracy({("a", "b"): S_AB, ("b", "a"): other}) == pytest.approx(5 / 6)


def test_matching_needs_two_models():
    with pytest.raises(ValueError, match="include_self"):
        matching_accuracy({("a", "a"): S_AA})


def test_layers_of_two_depths_match_by_relative_depth():
    # Layer i of n sits at i / (n - 1): 0, 1/3, 2/3, 1 against 0, 1/5, ..., 1.
    assert depth_targets(4, 6).nonzero()[:, 1].tolist() == [0, 2, 3, 5]
    assert depth_targets(6, 4).nonzero()[:, 1].tolist() == [0, 1, 1, 2, 2, 3]
    assert torch.equal(depth_targets(5, 5), torch.eye(5, dtype=torch.bool))
    # 3 layers against 5: layer 1 (1/2) is exactly layer 2 (2/4); 5 against 3: layer 1 (1/4) ties layers 0 and 1.
    assert depth_targets(5, 3)[1].tolist() == [True, True, False]
    s = torch.tensor([[0.9, 0.95, 0.0], [0.2, 0.1, 0.8]])  # 2 layers against 3: targets 0 and 2
    assert matched(s).tolist() == [0.0, 1.0]
    # S.T, 3 layers against 2: targets 0, either (1/2 lies halfway), 1; all three rows hit.
    assert matched(s.T).tolist() == [1.0, 1.0, 1.0]
    assert matching_accuracy({("a", "b"): s}) == pytest.approx(4 / 5)


def test_matched_takes_a_batch_of_matrices():
    batch = torch.stack([S_AB, S_AA])
    assert matched(batch).tolist() == [matched(S_AB).tolist(), matched(S_AA).tolist()]


# ------------------------------------------------------------------- bootstrap intervals


def test_interval_of_fixed_matrices_redraws_models():
    matrices = {("a", "b"): S_AB, ("a", "c"): torch.eye(3), ("b", "c"): torch.eye(3)}
    found = accuracy_interval(matrices, resample="models", draws=400)
    assert found.value == pytest.approx(matching_accuracy(matrices))
    assert found.low <= found.value <= found.high and found.low < found.high
    # One model per group: nothing to redraw, the interval is the value.
    single = accuracy_interval(matrices, resample="models", groups={"a": "x", "b": "y", "c": "z"}, draws=50)
    assert single.low == single.high == pytest.approx(single.value)
    with pytest.raises(ValueError, match="counts"):
        accuracy_interval(matrices, resample="both")


def test_document_counts_give_the_jaccard_and_redraw_documents():
    def dictionary(*keys):
        doc, start, end = (torch.tensor(c, dtype=torch.long) for c in zip(*keys))
        provenance = Provenance(doc, torch.arange(len(keys)), start, end, torch.zeros(len(keys), dtype=torch.long))
        return ITDA.from_atoms(torch.randn(len(keys), 4), k=1, provenance=provenance)

    a = [dictionary((1, 0, 2), (1, 3, 5), (2, 0, 4)), dictionary((2, 0, 4), (2, 5, 9))]
    b = [dictionary((1, 0, 2), (2, 0, 3)), dictionary((2, 5, 9), (2, 0, 4), (1, 3, 4))]
    counts = document_counts(a, b, min_overlap=0.7)
    assert counts.docs == [1, 2]
    assert torch.allclose(counts.jaccard()[0], jaccard_matrix(a, b, min_overlap=0.7))
    assert counts.common[0, 0].tolist() == [1.0, 1.0]  # (1, 0, 2) equal; (2, 0, 4) ~ (2, 0, 3): 3 / 4
    only_doc_2 = counts.jaccard(torch.tensor([[0.0], [1.0]], dtype=torch.float64))[0]
    assert only_doc_2[1, 1] == pytest.approx(1.0) and only_doc_2[0, 0] == pytest.approx(1 / 1)
    found = accuracy_interval(counts={("a", "b"): counts}, resample="documents", draws=200)
    assert found.value == pytest.approx(matching_accuracy({("a", "b"): counts.jaccard()[0]}))
    assert 0.0 <= found.low <= found.value <= found.high <= 1.0


def hand_dictionary(*keys) -> ITDA:
    """A dictionary of random atoms at hand-made ``(doc, start, end)`` spans."""
    doc, start, end = (torch.tensor(c, dtype=torch.long) for c in zip(*keys))
    provenance = Provenance(doc, torch.arange(len(keys)), start, end, torch.zeros(len(keys), dtype=torch.long))
    return ITDA.from_atoms(torch.randn(len(keys), 4), k=1, provenance=provenance)


X, Y, Z, W = (1, 0, 2), (1, 3, 5), (2, 0, 4), (2, 5, 9)


def test_difference_interval_pairs_the_draws_of_two_measures():
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    perfect = {pair: torch.eye(3) for pair in pairs}
    worse = {("a", "b"): S_AB, ("a", "c"): torch.eye(3), ("b", "c"): S_AB}
    ahead = accuracy_draws(perfect, resample="models", draws=300)
    behind = accuracy_draws(worse, resample="models", draws=300)
    gap = difference_interval(ahead, behind)
    assert gap.value == pytest.approx(1.0 - matching_accuracy(worse))
    # Paired: each draw's gap is the worse measure's misses on the same models, never below 0.
    assert 0.0 <= gap.low <= gap.value <= gap.high
    assert difference_interval(behind, behind).high == 0.0
    # Counts and matrices of the same Jaccards, models redrawn: the very same draws.
    a = [hand_dictionary(X, Y), hand_dictionary(Z, W)]
    b = [hand_dictionary(X, Z), hand_dictionary(Z, W)]
    counts = {("a", "b"): document_counts(a, b), ("a", "c"): document_counts(a, a), ("b", "c"): document_counts(b, a)}
    matrices = {pair: c.jaccard()[0] for pair, c in counts.items()}
    from_counts = accuracy_draws(counts=counts, resample="models", draws=50)
    torch.testing.assert_close(from_counts, accuracy_draws(matrices, resample="models", draws=50), rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="same number of draws"):
        difference_interval(ahead, behind[:10])


def test_rarity_weights_favour_atoms_of_one_layer():
    model_a = [hand_dictionary(X, Y), hand_dictionary(X, Z)]  # X is an atom of both layers
    model_b = [hand_dictionary(X, Y), hand_dictionary(Z, W)]
    weights = rarity_weights(model_a, power=2.0)
    assert weights == [{X: 0.25, Y: 1.0}, {X: 0.25, Z: 1.0}]
    assert rarity_weights(model_a, power=1.0)[1] == {X: 0.5, Z: 1.0}
    # Layer 0 of each: X weighs 1/4 in A and 1 in B, Y 1 in both: (1/4 + 1) / (5/4 + 2 - 5/4).
    found = rarity_jaccard_matrix(model_a, model_b, power=2.0)
    assert float(found[0, 0]) == pytest.approx(1.25 / 2.0)
    assert float(found[1, 1]) == pytest.approx(1.0 / (1.25 + 2.0 - 1.0))
    assert torch.equal(rarity_jaccard_matrix(model_a, model_b, power=0.0), jaccard_matrix(model_a, model_b))
    assert ruzicka({X: 2.0}, {X: 2.0}) == 1.0 and ruzicka({}, {}) == 0.0
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="power must be"):
            rarity_weights(model_a, power=bad)


def test_rarity_document_counts_give_the_weighted_jaccard():
    model_a = [hand_dictionary(X, Y, Z), hand_dictionary(X, Z, W)]
    model_b = [hand_dictionary(X, (2, 0, 3)), hand_dictionary(W, Z, (1, 3, 4))]
    counts = document_counts(model_a, model_b, min_overlap=0.7, rarity_power=2.0)
    assert torch.allclose(counts.jaccard()[0], rarity_jaccard_matrix(model_a, model_b, min_overlap=0.7, power=2.0))
    assert counts.sizes_a[0].tolist() == [1.25, 0.25]  # doc 1: X (1/4) + Y (1); doc 2: Z (1/4)
    found = accuracy_interval(counts={("a", "b"): counts}, resample="documents", draws=100)
    assert found.value == pytest.approx(matching_accuracy({("a", "b"): counts.jaccard()[0]}))


# ----------------------------------------------------------------- tiny models end to end


@pytest.fixture(scope="module")
def documents(wikitext) -> list[str]:
    return list(file_documents(wikitext))[:4]


@pytest.fixture(scope="module")
def word_tokenizer(documents, tmp_path_factory):
    """A word-level tokenizer trained on the documents (no spaces inside tokens), saved
    and loaded back as TransformerLens expects of a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(documents, trainers.WordLevelTrainer(vocab_size=30000, special_tokens=["<unk>", "<bos>", "<pad>"]))
    folder = tmp_path_factory.mktemp("word_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_llama(tokenizer, seed: int, layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


def layers_of(model, tokenizer, documents, name: str, record_fraction: float = 1.0):
    from transformer_lens.model_bridge import TransformerBridge

    from itda_lens.core.activations import TransformerLensSource

    bridge = TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tokenizer)
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(model.config.num_hidden_layers)]
    batches = token_batches(documents, tokenizer, seq_len=64, batch_size=8, max_tokens=1200)
    return model_layers(TransformerLensSource(bridge, hooks, model_name=name), batches, name, BuildSettings(k=4, threshold=0.3), record_fraction=record_fraction)


@pytest.fixture(scope="module")
def two_seeds(documents, smollm2_tokenizer):
    torch.set_num_threads(1)
    return [layers_of(tiny_llama(smollm2_tokenizer, seed), smollm2_tokenizer, documents, f"seed{seed}") for seed in (0, 1)]


def test_model_layers_record_every_built_token(two_seeds):
    first = two_seeds[0]
    assert first.hooks == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert first.tokens == 1200 == len(first.recorded)
    assert all(x.shape == (1200, 32) for x in first.activations.values())
    assert all(d.config.build["tokens"] == 1200 for d in first.dictionaries.values())


def test_a_model_against_itself_matches_every_layer(two_seeds):
    first = two_seeds[0]
    similarity = layer_similarities(first, first, max_tokens=512)
    assert list(similarity) == list(ALL_MEASURES)
    for measure, s in similarity.items():
        assert s.shape == (3, 3)
        assert torch.allclose(s.diagonal(), torch.ones(3, dtype=s.dtype), atol=1e-6), measure
        assert matching_accuracy({("a", "a"): s}, include_self=True) == 1.0, measure


def test_many_models_share_rows_and_cached_rbf_cka_is_rbf_cka(two_seeds):
    from itda_lens.tools.compare import similarity_matrix
    from itda_lens.tools.compare.comparison import shared_token_rows

    a, b = two_seeds
    rows_a, rows_b = shared_token_rows([a, b], max_tokens=300)
    assert torch.equal(a.recorded[rows_a][:, [0, 2, 3]], b.recorded[rows_b][:, [0, 2, 3]])
    found = model_similarities([a, b], ["rbf_cka", "linear_cka"], max_tokens=300, include_self=True)
    assert set(found["rbf_cka"]) == {("seed0", "seed0"), ("seed0", "seed1"), ("seed1", "seed1")}
    acts_a = {h: x[rows_a] for h, x in a.activations.items()}
    acts_b = {h: x[rows_b] for h, x in b.activations.items()}
    for measure in ("rbf_cka", "linear_cka"):
        direct = similarity_matrix(acts_a, acts_b, measure)
        assert torch.allclose(found[measure][("seed0", "seed1")], direct, atol=1e-12, rtol=0), measure
    assert torch.allclose(found["rbf_cka"][("seed0", "seed0")], similarity_matrix(acts_a, acts_a, "rbf_cka"), atol=1e-12, rtol=0)
    # With a subsample smaller than the rows, the same rows as rbf_cka's own.
    from itda_lens.tools.compare.comparison import _rbf_cka_matrices

    subsampled = _rbf_cka_matrices({"a": acts_a, "b": acts_b}, [("a", "b")], max_tokens=100, seed=3)[("a", "b")]
    assert torch.allclose(subsampled, similarity_matrix(acts_a, acts_b, "rbf_cka", max_tokens=100, seed=3), atol=1e-12, rtol=0)


def test_compare_two_seeds(two_seeds, tmp_path):
    a, b = two_seeds
    result = compare_models(a, b, by="token", max_tokens=512, heatmap=tmp_path / "h.png")
    json.dumps(result)
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert result["tokens_a"] == result["tokens_b"] == result["shared_tokens"] == 1200
    assert result["baseline_tokens"] == 512
    expected = jaccard_matrix(a.dictionaries, b.dictionaries, by="token")
    assert torch.allclose(torch.tensor(result["similarity"][JACCARD], dtype=torch.float64), expected, atol=1e-6)
    sizes = result["n_atoms_a"][0], result["n_atoms_b"][1]
    assert result["jaccard_null"][0][1] == pytest.approx(expected_jaccard(*sizes, 1200), abs=1e-6)
    assert set(result["summary"]) == set(ALL_MEASURES)
    assert torch.allclose(torch.tensor(result["similarity"][RARITY_JACCARD], dtype=torch.float64), rarity_jaccard_matrix(a.dictionaries, b.dictionaries, by="token"), atol=1e-6)
    assert 0.0 <= result["rarity_jaccard_interval"]["low"] <= result["rarity_jaccard_interval"]["value"] <= result["rarity_jaccard_interval"]["high"] <= 1.0
    counted_only = compare_models(a, b, measures=[RARITY_JACCARD, JACCARD], by="token")
    assert list(counted_only["similarity"]) == [RARITY_JACCARD, JACCARD] and counted_only["baseline_tokens"] == 0
    assert counted_only["similarity"][JACCARD] == result["similarity"][JACCARD]


def test_weighted_jaccard_weighs_atoms_by_their_use_on_the_shared_rows(two_seeds):
    from itda_lens.tools.compare import weighted_jaccard
    from itda_lens.tools.compare.comparison import WEIGHTED_JACCARD, dictionary_uses, shared_token_rows

    a, b = two_seeds
    found = model_similarities([a, b], [WEIGHTED_JACCARD], by="token", max_tokens=300, include_self=False)[WEIGHTED_JACCARD][("seed0", "seed1")]
    rows_a, rows_b = shared_token_rows([a, b], max_tokens=300)
    hook_a, hook_b = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"
    uses_a = dictionary_uses(a.dictionaries[hook_a], a.activations[hook_a][rows_a])
    uses_b = dictionary_uses(b.dictionaries[hook_b], b.activations[hook_b][rows_b])
    assert int(uses_a.sum()) >= 300 and len(uses_a) == a.dictionaries[hook_a].n_atoms
    assert float(found[1, 2]) == pytest.approx(weighted_jaccard(a.dictionaries[hook_a], b.dictionaries[hook_b], uses_a, uses_b, by="token"))
    assert 0.0 < float(found[1, 1]) < 1.0


def test_compare_across_two_tokenizers(documents, smollm2_tokenizer, word_tokenizer, two_seeds):
    smol = two_seeds[0]
    words = layers_of(tiny_llama(word_tokenizer, 2), word_tokenizer, documents, "words", record_fraction=0.5)
    rows_a, rows_b = shared_rows(smol.recorded, words.recorded)
    assert 100 < len(rows_a) < len(words.recorded)
    # Paired rows are the same characters of the same document.
    assert torch.equal(smol.recorded[rows_a][:, [0, 2, 3]], words.recorded[rows_b][:, [0, 2, 3]])
    assert not torch.equal(smol.recorded[rows_a][:, 1], words.recorded[rows_b][:, 1])
    result = compare_models(smol, words, by="span", max_tokens=256)
    assert result["baseline_tokens"] == min(256, len(rows_a))
    assert 0 < result["shared_tokens"] < min(result["tokens_a"], result["tokens_b"])
    null = jaccard_null_matrix(smol, words)
    assert torch.all((null > 0) & (null < 0.5))
    assert max(max(row) for row in result["similarity"][JACCARD]) > 0
    # Lined up by last character: more rows, each pair ending at the same character.
    from itda_lens.tools.compare.comparison import shared_token_rows

    ends_a, ends_b = shared_token_rows([smol, words], align="end")
    assert len(ends_a) > len(rows_a)
    assert torch.equal(smol.recorded[ends_a][:, [0, 3]], words.recorded[ends_b][:, [0, 3]])
    # Overlapping spans match more atoms, and the null counts the same matches.
    loose = compare_models(smol, words, measures=[JACCARD], min_overlap=0.6)
    assert loose["shared_tokens"] > result["shared_tokens"]
    assert torch.all(torch.tensor(loose["similarity"][JACCARD]) >= torch.tensor(result["similarity"][JACCARD]))
    assert torch.all(torch.tensor(loose["jaccard_null"]) > null)
    interval = loose["jaccard_interval"]
    assert interval["low"] <= interval["value"] <= interval["high"]
    assert interval["value"] == pytest.approx(loose["summary"][JACCARD]["matching_accuracy"])


def test_span_trimming_of_occurrences():
    text = "a  word \n"
    assert trimmed_span(text, 1, 7) == (3, 7)
    assert trimmed_span(text, 7, 9) == (7, 9)


# ---------------------------------------------------------------- saved dictionaries, CLI


def save_layers(layers, folder):
    folder.mkdir()
    for hook, itda in layers.dictionaries.items():
        itda.save(folder / hook)
    return folder


def compare_args(*argv: str) -> argparse.Namespace:
    from itda_lens.tools.compare.cli import add_compare_parser

    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compare", *argv])


def test_compare_saved_dictionaries(two_seeds, tmp_path):
    from itda_lens.tools.compare.cli import run_compare

    a, b = (save_layers(layers, tmp_path / layers.name) for layers in two_seeds)
    result = run_compare(compare_args("--dictionaries-a", str(a), "--dictionaries-b", str(b), "--by", "token", "--out", str(tmp_path / "out")))
    assert result["hooks_a"] == two_seeds[0].hooks
    direct = compare_dictionaries(two_seeds[0].dictionaries, two_seeds[1].dictionaries, by="token")
    assert result["similarity"] == direct["similarity"]
    assert result["jaccard_null"] == direct["jaccard_null"]
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())["similarity"] == result["similarity"]
    assert (tmp_path / "out" / "similarity.png").exists()
    first = two_seeds[0].dictionaries["blocks.0.hook_resid_post"]
    assert result["similarity"][JACCARD][0][0] == pytest.approx(jaccard(first, two_seeds[1].dictionaries["blocks.0.hook_resid_post"], by="token"))
    # --rarity-power 0 weighs every atom 1: the rarity-weighted Jaccard is then the paper's.
    plain = run_compare(compare_args("--dictionaries-a", str(a), "--dictionaries-b", str(b), "--by", "token", "--rarity-power", "0", "--out", str(tmp_path / "p0")))
    assert plain["rarity_power"] == 0.0 and plain["similarity"][RARITY_JACCARD] == plain["similarity"][JACCARD]
    assert result["similarity"][RARITY_JACCARD] != plain["similarity"][RARITY_JACCARD]
    with pytest.raises(ValueError, match="--rarity-power"):
        run_compare(compare_args("--dictionaries-a", str(a), "--dictionaries-b", str(b), "--rarity-power", "-1", "--out", str(tmp_path / "bad")))


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_compare_command_on_two_model_folders(backend, smollm2_tokenizer, wikitext, tmp_path):
    from itda_lens.tools.compare.cli import run_compare

    if backend == "nnsight":
        pytest.importorskip("nnsight")
    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"model{seed}"
        tiny_llama(smollm2_tokenizer, seed, layers=2).save_pretrained(folder)
        smollm2_tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    args = compare_args(
        "--model-a", folders[0], "--model-b", folders[1], "--backend", backend, "--text-file", str(wikitext),
        "--max-tokens", "500", "--seq-len", "64", "--k", "4", "--measures", "itda_jaccard", "linear_cka", "rbf_cka",
        "--out", str(tmp_path / "out"), "--no-progress",
    )
    result = run_compare(args)
    assert result["hooks_a"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert list(result["similarity"]) == ["itda_jaccard", "linear_cka", "rbf_cka"]
    assert result["shared_tokens"] == 500 and result["baseline_tokens"] == 500
    assert (tmp_path / "out" / "similarity.png").exists()


def test_compare_command_across_tokenizers_prints_matrix_and_interval(smollm2_tokenizer, word_tokenizer, wikitext, tmp_path, capsys):
    from itda_lens.tools.compare.cli import run_compare

    folders = []
    for seed, (tokenizer, layers) in enumerate(((smollm2_tokenizer, 2), (word_tokenizer, 3))):
        folder = tmp_path / f"model{seed}"
        tiny_llama(tokenizer, seed, layers=layers).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    args = compare_args(
        "--model-a", folders[0], "--model-b", folders[1], "--text-file", str(wikitext), "--max-tokens", "500", "--seq-len", "64",
        "--k", "4", "--measures", "itda_jaccard", "linear_cka", "--min-overlap", "0.6", "--align", "end", "--out", str(tmp_path / "out"), "--no-progress",
    )
    result = run_compare(args)
    assert (len(result["hooks_a"]), len(result["hooks_b"])) == (2, 3)
    assert result["min_overlap"] == 0.6 and result["align"] == "end" and result["baseline_tokens"] > 0
    printed = capsys.readouterr().out
    assert "overlap over union >= 0.6" in printed and "95% interval over documents" in printed
    assert len(result["similarity"][JACCARD][0]) == 3 and f"{result['similarity'][JACCARD][1][2]:.3f}/" in printed
    with pytest.raises(ValueError, match="--min-overlap"):
        run_compare(compare_args("--dictionaries-a", "x", "--dictionaries-b", "y", "--min-overlap", "0.4", "--out", str(tmp_path / "o")))


def test_compare_command_rejects_mixed_inputs(tmp_path):
    from itda_lens.tools.compare.cli import run_compare

    with pytest.raises(ValueError, match="not both"):
        run_compare(compare_args("--model-a", "x", "--dictionaries-b", "y", "--out", str(tmp_path / "o")))
