"""Jaccard of dictionaries by provenance: self, disjoint documents, two tokenizers, the null."""

from __future__ import annotations

import itertools
import re
from typing import ClassVar

import pytest
import torch

from itda_lens.core.build import build
from itda_lens.core.config import BuildSettings
from itda_lens.core.itda import ITDA
from itda_lens.core.metrics import atom_uses
from itda_lens.core.provenance import Provenance
from itda_lens.core.text import file_documents, token_batches
from itda_lens.tools.compare import atom_keys, expected_jaccard, jaccard, jaccard_report, matched_pairs, weighted_jaccard

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def documents(wikitext) -> list[str]:
    return list(file_documents(wikitext))[:8]


def word_level_tokenizer(documents: list[str]):
    """A word-level tokenizer trained here on the documents: words and punctuation runs,
    spaces never part of a token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(documents, trainers.WordLevelTrainer(vocab_size=30000, special_tokens=["<unk>", "<bos>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


def byte_bpe_tokenizer(documents: list[str], vocab_size: int = 600):
    """A small byte-level BPE trained here on the documents: splits words differently from
    SmolLM2's but, like it, attaches the space to the following word."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(documents, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", pad_token="<pad>")


def atoms_at_words(documents: list[str], tokenizer, words: set[str]) -> ITDA:
    """A dictionary (random atoms) with one atom at every token that is a whole word of
    ``words`` (its text without surrounding spaces, with whitespace on both sides)."""

    def whole(text: str, before: str, after: str) -> bool:
        spaced_before = text[:1].isspace() or not before or before[-1].isspace()
        return text.strip() in words and spaced_before and (not after or after[0].isspace())

    parts = []
    for batch in token_batches(documents, tokenizer, seq_len=256, batch_size=8):
        positions = torch.nonzero(batch.mask.flatten())[:, 0]
        provenance = batch.provenance(positions)
        rows = zip(provenance.token, provenance.before, provenance.after)
        chosen = [i for i, (text, before, after) in enumerate(rows) if whole(text, before, after)]
        parts.append(provenance.select(chosen))
    provenance = Provenance.cat(parts)
    atoms = torch.randn(len(provenance), 8, generator=torch.Generator().manual_seed(0))
    return ITDA.from_atoms(atoms, k=1, provenance=provenance)


def standalone_count(documents: list[str], word: str) -> int:
    """Occurrences of ``word`` with whitespace (or the text's edge) on both sides."""
    pattern = re.compile(rf"(?<!\S){re.escape(word)}(?!\S)")
    return sum(len(pattern.findall(text)) for text in documents)


class ContextSource:
    """A deterministic stand-in model: each position's activation is a fixed random
    vector of its token plus the mean of those of the tokens before it."""

    hooks: ClassVar[list[str]] = ["early", "late"]
    model_name = "context"
    d_model = 16

    def __init__(self, vocab_size: int):
        self.table = torch.randn(vocab_size, self.d_model, generator=torch.Generator().manual_seed(1))

    def __call__(self, tokens):
        x = self.table[tokens]
        context = x.cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[None, :, None]
        return {"early": x + 0.1 * context, "late": x + 2.0 * context}


def build_on(documents: list[str], tokenizer) -> dict[str, ITDA]:
    batches = token_batches(documents, tokenizer, seq_len=64, batch_size=8, max_tokens=3000)
    return build(ContextSource(len(tokenizer)), batches, BuildSettings(k=4, threshold=0.3), progress=False).dictionaries


# -------------------------------------------------------------------------- Jaccard


@pytest.mark.parametrize("by", ["span", "token"])
def test_jaccard_with_itself_is_one(documents, smollm2_tokenizer, by):
    for itda in build_on(documents[:3], smollm2_tokenizer).values():
        assert jaccard(itda, itda, by=by) == 1.0


@pytest.mark.parametrize("by", ["span", "token"])
def test_jaccard_across_disjoint_documents_is_zero(documents, smollm2_tokenizer, by):
    first = build_on(documents[:3], smollm2_tokenizer)
    second = build_on(documents[3:6], smollm2_tokenizer)
    for hook in ContextSource.hooks:
        assert jaccard(first[hook], second[hook], by=by) == 0.0
        assert jaccard(first[hook], first[hook], by=by) == 1.0


def test_jaccard_is_a_set_ratio():
    def provenance(spans):
        doc, start, end = (torch.tensor(c, dtype=torch.long) for c in zip(*spans))
        return Provenance(doc, torch.arange(len(spans)), start, end, torch.zeros(len(spans), dtype=torch.long))

    a = provenance([(1, 0, 3), (1, 4, 7), (2, 0, 5)])
    b = provenance([(1, 4, 7), (2, 0, 5), (2, 6, 9), (3, 0, 1)])
    assert jaccard(a, b, trim_whitespace=False) == pytest.approx(2 / 5)


def test_span_mode_matches_across_two_tokenizers(documents, smollm2_tokenizer):
    # SmolLM2 and a byte-level BPE trained here: same documents, different token indices.
    bpe = byte_bpe_tokenizer(documents)
    ours = atoms_at_words(documents, smollm2_tokenizer, {"the", "of"})
    theirs = atoms_at_words(documents, bpe, {"the", "of"})
    n_the, n_of = standalone_count(documents, "the"), standalone_count(documents, "of")
    assert len(ours.provenance) == len(theirs.provenance) == n_the + n_of > 100
    assert not torch.equal(ours.provenance.token_index, theirs.provenance.token_index)
    assert jaccard(ours, theirs, by="span") == 1.0
    assert jaccard(ours, theirs, by="token") < 0.2
    only_the = atoms_at_words(documents, bpe, {"the"})
    assert jaccard(ours, only_the, by="span") == pytest.approx(n_the / (n_the + n_of))


def test_span_mode_ignores_where_a_tokenizer_puts_spaces(documents, smollm2_tokenizer):
    # SmolLM2's tokens carry the space before a word (" the"); the word-level ones do not.
    words = word_level_tokenizer(documents)
    ours = atoms_at_words(documents, smollm2_tokenizer, {"the", "and"})
    theirs = atoms_at_words(documents, words, {"the", "and"})
    assert {t[0] for t in ours.provenance.token} == {" "}
    assert jaccard(ours, theirs, by="span") == 1.0
    assert jaccard(ours, theirs, by="span", trim_whitespace=False) == 0.0


def test_whitespace_only_tokens_keep_their_span():
    provenance = Provenance(torch.tensor([7, 7]), torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([2, 6]), torch.tensor([0, 0]), [" \n", " the"])
    assert atom_keys(provenance) == {(7, 0, 2), (7, 3, 6)}


def test_unknown_provenance_is_a_clear_error():
    itda = ITDA.from_atoms(torch.randn(5, 4), k=1)
    with pytest.raises(ValueError, match="no provenance"):
        jaccard(itda, itda)


# -------------------------------------------------------------- overlapping spans


def spans(*keys) -> Provenance:
    """A provenance of hand-made ``(doc, start, end)`` records."""
    doc, start, end = (torch.tensor(c, dtype=torch.long) for c in zip(*keys))
    return Provenance(doc, torch.arange(len(keys)), start, end, torch.zeros(len(keys), dtype=torch.long))


# "representation" cut two ways: represent|ation (A) and repres|entation (B).
CUT_A = spans((1, 0, 9), (1, 9, 14))
CUT_B = spans((1, 0, 6), (1, 6, 14))


def test_spans_match_when_overlap_over_union_reaches_the_threshold():
    # represent/repres: 6 / 9 = 0.667; ation/entation: 5 / 8 = 0.625; across: 3 / 14, 0.
    assert jaccard(CUT_A, CUT_B, trim_whitespace=False) == 0.0
    assert jaccard(CUT_A, CUT_B, trim_whitespace=False, min_overlap=0.6) == 1.0
    assert jaccard(CUT_A, CUT_B, trim_whitespace=False, min_overlap=0.65) == pytest.approx(1 / 3)
    assert jaccard(CUT_A, CUT_B, trim_whitespace=False, min_overlap=0.7) == 0.0
    assert sorted(matched_pairs(atom_keys(CUT_A), atom_keys(CUT_B), 0.65)) == [((1, 0, 9), (1, 0, 6))]


def test_overlap_needs_the_same_document_and_an_exact_match_always_counts():
    other_doc = spans((2, 0, 6), (2, 6, 14))
    assert jaccard(CUT_A, other_doc, trim_whitespace=False, min_overlap=0.51) == 0.0
    mixed = spans((1, 0, 9), (1, 9, 12), (1, 12, 14))
    # (1, 0, 9) equal; (1, 9, 14) overlaps (1, 9, 12) by 3 / 5 and (1, 12, 14) by 2 / 5.
    assert jaccard(CUT_A, mixed, trim_whitespace=False) == pytest.approx(1 / 4)
    assert jaccard(CUT_A, mixed, trim_whitespace=False, min_overlap=0.6) == pytest.approx(2 / 3)


def test_matching_is_one_to_one():
    # Two halves of one span overlap it by exactly 1/2 each: below any allowed threshold.
    assert jaccard(spans((1, 0, 4), (1, 4, 8)), spans((1, 0, 8)), trim_whitespace=False, min_overlap=0.51) == 0.0
    # Overlapping spans in one dictionary: the span of B keeps only its best match.
    a = spans((1, 0, 6), (1, 1, 7))
    b = spans((1, 1, 6))
    assert matched_pairs(atom_keys(a, trim_whitespace=False), atom_keys(b, trim_whitespace=False), 0.8) == [((1, 0, 6), (1, 1, 6))]
    assert 0.0 <= jaccard(a, b, trim_whitespace=False, min_overlap=0.8) == pytest.approx(1 / 2)


def test_exact_threshold_is_the_set_jaccard():
    a = spans((1, 0, 3), (1, 4, 7), (2, 0, 5))
    b = spans((1, 4, 7), (2, 0, 5), (2, 6, 9), (3, 0, 1), (1, 0, 2))
    exact = jaccard(a, b, trim_whitespace=False)
    assert exact == jaccard(a, b, trim_whitespace=False, min_overlap=1.0) == pytest.approx(2 / 6)
    assert jaccard(a, b, trim_whitespace=False, min_overlap=0.6) == pytest.approx(3 / 5)


def random_tokenization(length: int, generator: torch.Generator, doc: int = 5) -> list[tuple[int, int, int]]:
    """A random cut of ``length`` characters into tokens of 1-6 characters."""
    cuts, position = [], 0
    while position < length:
        size = int(torch.randint(1, 7, (), generator=generator))
        cuts.append((doc, position, min(length, position + size)))
        position += size
    return cuts


@pytest.mark.parametrize("min_overlap", [0.51, 0.6, 0.75, 0.9])
def test_matching_agrees_with_a_brute_force_search(min_overlap):
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = set(random_tokenization(120, generator)), set(random_tokenization(120, generator))

        def overlap(x, y):
            inter = min(x[2], y[2]) - max(x[1], y[1])
            return inter / (max(x[2], y[2]) - min(x[1], y[1]))

        expected = {(x, y) for x in a for y in b if overlap(x, y) >= min_overlap}
        found = matched_pairs(a, b, min_overlap)
        assert set(found) == expected
        assert len({x for x, _ in found}) == len({y for _, y in found}) == len(found)


def test_min_overlap_outside_its_range_is_a_clear_error():
    for bad in (0.5, 0.2, 1.5, True):
        with pytest.raises(ValueError, match="min_overlap"):
            jaccard(CUT_A, CUT_B, min_overlap=bad)
    with pytest.raises(ValueError, match="by='span'"):
        jaccard(CUT_A, CUT_B, by="token", min_overlap=0.8)


# ----------------------------------------------------------------------------- null


def brute_force_expected_jaccard(size_a, size_b, population_a, population_b, shared):
    """Average over every pair of subsets; items 0..shared-1 are common to both populations."""
    total, count = 0.0, 0
    for a in itertools.combinations(range(population_a), size_a):
        for b in itertools.combinations(range(population_b), size_b):
            common = len({i for i in a if i < shared} & {i for i in b if i < shared})
            total += common / (size_a + size_b - common)
            count += 1
    return total / count


def test_expected_jaccard_by_hand():
    # N=4, sizes 2 and 2: P(common = 0, 1, 2) = 1/6, 4/6, 1/6 -> 0 + 4/6 * 1/3 + 1/6 * 1 = 7/18.
    assert expected_jaccard(2, 2, 4) == pytest.approx(7 / 18, abs=1e-12)


@pytest.mark.parametrize(
    "sizes",
    [(2, 3, 6, 6, 6), (3, 2, 7, 5, 4), (1, 4, 5, 6, 2), (4, 4, 6, 7, 6), (2, 2, 5, 5, 0)],
)
def test_expected_jaccard_is_exact(sizes):
    assert expected_jaccard(*sizes) == pytest.approx(brute_force_expected_jaccard(*sizes), abs=1e-12)


def test_expected_jaccard_of_large_sets_is_near_the_ratio_of_expectations():
    a, b, n = 3000, 5000, 60000
    common = a * b / n
    assert expected_jaccard(a, b, n) == pytest.approx(common / (a + b - common), rel=1e-3)


def test_expected_jaccard_rejects_impossible_inputs():
    with pytest.raises(ValueError, match="give shared"):
        expected_jaccard(2, 2, 10, 12)
    with pytest.raises(ValueError, match="exceed"):
        expected_jaccard(11, 2, 10)
    with pytest.raises(ValueError, match="shared"):
        expected_jaccard(2, 2, 10, 12, 11)


def test_report_gives_the_null_from_the_build(documents, smollm2_tokenizer):
    dictionaries = build_on(documents[:3], smollm2_tokenizer)
    early, late = dictionaries["early"], dictionaries["late"]
    report = jaccard_report(early, late)
    tokens = early.config.build["tokens"]
    assert report.null == pytest.approx(expected_jaccard(early.n_atoms, late.n_atoms, tokens))
    assert report.jaccard == jaccard(early, late)
    assert report.common == len(atom_keys(early) & atom_keys(late))


def test_the_null_follows_the_overlap_rule_exactly():
    # Two tokenizations of one text; each dictionary a random subset of its own tokens.
    generator = torch.Generator().manual_seed(3)
    tokens_a = random_tokenization(14, generator)
    tokens_b = random_tokenization(14, generator)
    min_overlap = 0.6
    shared = len(matched_pairs(set(tokens_a), set(tokens_b), min_overlap))
    assert 0 < shared < min(len(tokens_a), len(tokens_b))
    size_a, size_b = 3, 2
    total, count = 0.0, 0
    for picked_a in itertools.combinations(tokens_a, size_a):
        for picked_b in itertools.combinations(tokens_b, size_b):
            total += jaccard(spans(*picked_a), spans(*picked_b), trim_whitespace=False, min_overlap=min_overlap)
            count += 1
    assert expected_jaccard(size_a, size_b, len(tokens_a), len(tokens_b), shared) == pytest.approx(total / count, abs=1e-12)


def test_report_with_overlap_gives_its_matches_and_null():
    report = jaccard_report(CUT_A, CUT_B, trim_whitespace=False, min_overlap=0.65, population_a=10, population_b=12, shared=7)
    assert (report.jaccard, report.common, report.size_a, report.size_b) == (pytest.approx(1 / 3), 1, 2, 2)
    assert report.null == pytest.approx(expected_jaccard(2, 2, 10, 12, 7))


# ------------------------------------------------------------ use-weighted Jaccard


def test_weighted_jaccard_weighs_matched_atoms_by_their_share_of_use():
    a = spans((1, 0, 3), (1, 4, 7))
    b = spans((1, 4, 7), (2, 0, 5))
    # Shares: a 0.75 / 0.25, b 0.5 / 0.5; the one match (1, 4, 7) gives min(0.25, 0.5).
    assert weighted_jaccard(a, b, torch.tensor([3, 1]), torch.tensor([1, 1])) == pytest.approx(0.25 / 1.75)
    assert weighted_jaccard(a, a, torch.tensor([5, 2]), torch.tensor([10, 4])) == pytest.approx(1.0)
    # A matched atom that is never used counts for nothing.
    assert weighted_jaccard(a, b, torch.tensor([1, 0]), torch.tensor([1, 1])) == 0.0


def test_weighted_jaccard_matches_by_the_same_overlap_rule():
    uses = torch.tensor([1.0, 1.0])
    assert weighted_jaccard(CUT_A, CUT_B, uses, uses, trim_whitespace=False) == 0.0
    assert weighted_jaccard(CUT_A, CUT_B, uses, uses, trim_whitespace=False, min_overlap=0.6) == pytest.approx(1.0)
    assert weighted_jaccard(CUT_A, CUT_B, uses, uses, trim_whitespace=False, min_overlap=0.65) == pytest.approx(0.5 / 1.5)


def test_weighted_jaccard_refuses_uses_that_do_not_fit():
    with pytest.raises(ValueError, match="one per atom"):
        weighted_jaccard(CUT_A, CUT_B, torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match=">= 0"):
        weighted_jaccard(CUT_A, CUT_B, torch.tensor([1.0, -1.0]), torch.ones(2))
    with pytest.raises(ValueError, match="no atom"):
        weighted_jaccard(CUT_A, CUT_B, torch.zeros(2), torch.ones(2))


def test_atom_uses_counts_tokens_not_slots():
    indices = torch.tensor([[0, 0, 2], [1, 2, 2]])
    values = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, 1.0]])
    # Atom 0's two slots cancel: no use; atom 2 twice in one code counts once.
    assert atom_uses(indices, values, 4).tolist() == [0, 1, 2, 0]
