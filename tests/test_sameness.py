"""Each verb gives the same codes and logits through TransformerLens and through nnsight.

One dictionary (built on the real SmolLM2-135M-Instruct at ``blocks.15.hook_resid_post``),
one prompt; every verb runs on a ``TransformerBridge`` with the dictionary attached, and
inside nnsight traces run locally and with ``remote="local"`` (the request serialised and
deserialised as for NDIF). Atom indices are equal; logits, coefficients and
attributions agree to 1e-4 of their largest magnitude (at least 1): the two libraries'
float32 activations at the hook already differ by 2e-4 (of up to 2.5e4, at BOS), and a
spliced or edited residual stream carries such differences to the logits (7e-4 of logits
up to 30, measured).
"""

from __future__ import annotations

import nnsight
import pytest
import torch

import itda_lens.backends.nnsight as itn
from itda_lens.backends.transformer_lens import attach, detach
from itda_lens.core import ops
from itda_lens.tools.attribution import attribute, logit_diff, measure_ablations

HOOK = "blocks.15.hook_resid_post"
MODULE = "model.layers.15"
PROMPT = "When Mary and John went to the store, John gave a drink to"
MODES = [False, "local"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def itda(dictionaries):
    return dictionaries[HOOK]


@pytest.fixture(scope="module")
def tl(bridge):
    detach(bridge)
    yield bridge
    detach(bridge)


@pytest.fixture(scope="module")
def prompt(nnsight_model, tl):
    prompts = itn.tokenize(nnsight_model, PROMPT)
    assert torch.equal(prompts.input_ids, tl.to_tokens(PROMPT))  # BOS + text on both sides
    assert prompts.mask.tolist() == [[False] + [True] * (prompts.input_ids.shape[1] - 1)]
    return prompts


@pytest.fixture(scope="module")
def atom(tl, itda, prompt):
    """An atom active at some positions of the prompt, not all."""
    with attach(tl, itda) as splice:
        codes = splice.encode(prompt.input_ids)
    active = codes.indices[0, 1:, 0]
    counts = torch.bincount(active, minlength=itda.n_atoms)
    counts[counts == len(active)] = 0
    return int(counts.argmax())


def _tl_run(model, itda, tokens, error_term, edit=None):
    """Logits and the codes the model used, with the dictionary attached and ``edit`` on."""
    with attach(model, itda, error_term=error_term) as splice, torch.no_grad():
        with splice.recording() as record, edit(splice) if edit else _nothing():
            logits = model(tokens)
    return logits, (record.indices, record.values)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _nn_run(lm, prompt, mode, verb):
    """Logits and what ``verb(layer)`` returned, in one trace."""
    with lm.trace(prompt.input_ids, attention_mask=prompt.attention_mask, remote=mode):
        returned = verb(lm.model.layers[15])
        nnsight.save(returned)
        logits = lm.output.logits.save()
    return logits, returned


def _close(a, b) -> bool:
    """``a`` and ``b`` agree to :data:`TOLERANCE` of their largest magnitude (at least 1)."""
    a, b = a.detach(), b.detach()
    return bool((a - b).abs().max() <= TOLERANCE * max(1.0, float(b.abs().max())))


def _same(tl_result, nn_result, codes=True):
    (tl_logits, tl_codes), (nn_logits, nn_codes) = tl_result, nn_result
    assert _close(nn_logits, tl_logits)
    if codes:
        assert torch.equal(tl_codes[0], nn_codes[0])
        assert _close(nn_codes[1], tl_codes[1])


@pytest.mark.parametrize("mode", MODES)
def test_encode(tl, nnsight_model, itda, prompt, mode):
    with attach(tl, itda) as splice:
        codes = splice.encode(PROMPT)
    clean = tl(prompt.input_ids)
    payload = itn.payload(itda)
    nn = _nn_run(nnsight_model, prompt, mode, lambda layer: itn.encode(layer, payload, mask=prompt.mask))
    _same((clean, codes), nn)
    assert (codes.indices[0, 0] == ops.NOT_ENCODED).all() and (codes.values[0, 0] == 0).all()


@pytest.mark.parametrize("error_term", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_splice(tl, nnsight_model, itda, prompt, mode, error_term):
    payload = itn.payload(itda)
    expected = _tl_run(tl, itda, prompt.input_ids, error_term)
    _same(expected, _nn_run(nnsight_model, prompt, mode, lambda layer: itn.splice(layer, payload, mask=prompt.mask, error_term=error_term)))


POSITIONS = {"all": "all", "last": -1, "list": [3, 5], "mask": torch.arange(15) % 2 == 1}


@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("error_term", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_ablate(tl, nnsight_model, itda, prompt, atom, mode, error_term, positions):
    where = POSITIONS[positions]
    if isinstance(where, torch.Tensor):
        where = where[: prompt.input_ids.shape[1]]
    payload = itn.payload(itda)
    expected = _tl_run(tl, itda, prompt.input_ids, error_term, lambda s: s.ablate(atom, positions=where))
    got = _nn_run(nnsight_model, prompt, mode, lambda layer: itn.ablate(layer, payload, atom, positions=where, mask=prompt.mask, error_term=error_term))
    _same(expected, got)
    if positions == "all":
        assert (expected[0] - _tl_run(tl, itda, prompt.input_ids, error_term)[0]).abs().max() > 1e-3  # the edit matters


@pytest.mark.parametrize("error_term", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_clamp(tl, nnsight_model, itda, prompt, atom, mode, error_term):
    payload = itn.payload(itda)
    expected = _tl_run(tl, itda, prompt.input_ids, error_term, lambda s: s.clamp(atom, 7.5, positions=[-2, -1]))
    got = _nn_run(nnsight_model, prompt, mode, lambda layer: itn.clamp(layer, payload, atom, 7.5, positions=[-2, -1], mask=prompt.mask, error_term=error_term))
    _same(expected, got)


@pytest.mark.parametrize("error_term", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_steer(tl, nnsight_model, itda, prompt, atom, mode, error_term):
    other = (atom + 1) % itda.n_atoms
    payload = itn.payload(itda) if not error_term else itn.payload(itda, atoms=[atom, other])
    expected = _tl_run(tl, itda, prompt.input_ids, error_term, lambda s: s.steer([atom, other], [20.0, -5.0], positions=-1))
    got = _nn_run(
        nnsight_model,
        prompt,
        mode,
        lambda layer: itn.steer(layer, payload, [atom, other], [20.0, -5.0], positions=-1, mask=prompt.mask, error_term=error_term),
    )
    _same(expected, got, codes=False)


@pytest.mark.parametrize("mode", MODES)
def test_calibrate_and_relative_steer(tl, nnsight_model, itda, prompt, atom, mode):
    with attach(tl, itda, error_term=True) as splice:
        typical = splice.calibrate(PROMPT)
        with splice.steer(atom, 3.0, relative=True), torch.no_grad():
            expected = tl(prompt.input_ids)
    nn_typical = itn.calibrate(nnsight_model, PROMPT, itda, remote=mode)
    assert torch.equal(typical.isnan(), nn_typical.isnan())
    assert _close(nn_typical.nan_to_num(), typical.nan_to_num())
    payload = itn.payload(itda, atoms=[atom], typical_coefficients=nn_typical)
    got = _nn_run(nnsight_model, prompt, mode, lambda layer: itn.steer(layer, payload, atom, 3.0, relative=True, mask=prompt.mask, error_term=True))
    _same((expected, None), got, codes=False)


@pytest.fixture(scope="module")
def metric(tl):
    mary, john = (tl.tokenizer.encode(w, add_special_tokens=False)[0] for w in (" Mary", " John"))
    return logit_diff(mary, john)


@pytest.mark.parametrize("mode", MODES)
def test_attribute(tl, nnsight_model, itda, prompt, metric, mode):
    with attach(tl, itda):
        expected = attribute(tl, PROMPT, metric)
    got = itn.attribute(nnsight_model, PROMPT, metric, itda, remote=mode)
    assert got.hook == expected.hook == HOOK
    assert abs(got.metric - expected.metric) <= TOLERANCE
    assert torch.equal(got.indices, expected.indices)
    assert _close(got.attribution, expected.attribution) and _close(got.error, expected.error)
    assert got.table(5) == expected.table(5)


@pytest.mark.parametrize("mode", MODES)
def test_measure_ablations(tl, nnsight_model, itda, metric, atom, mode):
    atoms = [atom, [atom, (atom + 1) % itda.n_atoms]]
    with attach(tl, itda):
        expected = measure_ablations(tl, PROMPT, atoms, metric)
    got = itn.measure_ablations(nnsight_model, PROMPT, atoms, metric, itda, remote=mode)
    assert (got - expected).abs().max() <= TOLERANCE  # differences of logits
    assert expected.abs().max() > 1e-3
