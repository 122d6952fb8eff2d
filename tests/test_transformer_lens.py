"""ITDA dictionaries spliced into the real SmolLM2-135M-Instruct through TransformerLens.

Every test runs on TransformerBridge; where TransformerLens 3.x is installed the basic
ones run on HookedTransformer too, and the statistical ones (steering, attribution) run
on HookedTransformer there and on TransformerBridge on TransformerLens 4.x.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from itda_lens import ITDA, evaluate
from itda_lens.backends.transformer_lens import attach, attach_all, attached, attachments, detach
from itda_lens.core.metrics import next_token_losses
from itda_lens.core.ops import NOT_ENCODED, position_mask
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools.attribution import attribute, attribute_all, log_prob, logit_diff, measure_ablations, spearman

pytestmark = pytest.mark.tl3

EARLY, LATE = "blocks.3.hook_resid_post", "blocks.15.hook_resid_post"
NAMES = ("hook_sae_input", "hook_indices", "hook_values", "hook_sae_recons", "hook_sae_error", "hook_sae_output")
PROMPT = "The capital of France is Paris, and the capital of Germany is Berlin."
IOI = "When Mary and John went to the store, John gave a drink to"

try:
    from transformer_lens import HookedTransformer  # noqa: F401

    HAS_HOOKED_TRANSFORMER = True
except (ImportError, AttributeError):
    HAS_HOOKED_TRANSFORMER = False
BACKENDS = ["bridge", "hooked_transformer"] if HAS_HOOKED_TRANSFORMER else ["bridge"]
#: The backend the statistical tests use: HookedTransformer on TransformerLens 3.x.
PRIMARY = BACKENDS[-1]


def _model(request, name):
    model = request.getfixturevalue("bridge" if name == "bridge" else "hooked_transformer")
    detach(model)
    return model


@pytest.fixture(params=BACKENDS)
def model(request):
    model = _model(request, request.param)
    yield model
    detach(model)


@pytest.fixture
def primary(request):
    model = _model(request, PRIMARY)
    yield model
    detach(model)


def _token(model, text: str) -> int:
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_position_mask():
    assert position_mask("all", 2, 3).all() and not position_mask("new", 2, 3).any()
    assert position_mask("new", 2, 1, generated=True).all() and not position_mask([0], 2, 1, generated=True).any()
    assert position_mask(-1, 1, 4).tolist() == [[False, False, False, True]]
    assert position_mask([0, 2], 1, 4).tolist() == [[True, False, True, False]]
    assert position_mask(slice(1, None), 1, 3).tolist() == [[False, True, True]]
    assert position_mask(torch.tensor([True, False]), 2, 2).tolist() == [[True, False], [True, False]]
    with pytest.raises(IndexError, match=r"positions \[5\] lie outside the sequence of 4"):
        position_mask(5, 1, 4)
    with pytest.raises(ValueError, match="must have shape"):
        position_mask(torch.ones(3, dtype=torch.bool), 1, 4)


@torch.no_grad()
def test_attach_and_detach_permanently_and_as_context(model, dictionaries):
    itda = dictionaries[EARLY]
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    splice = attach(model, itda)
    spliced = model(tokens)
    assert (spliced - clean).abs().max() > 1e-2
    assert attachments(model) == {EARLY: splice} and attached(model) is splice and attached(model, EARLY) is splice
    assert f"{EARLY}.itda.hook_values" in model.hook_dict
    model.reset_hooks(including_permanent=True)  # the splice is not a TransformerLens hook function
    torch.testing.assert_close(model(tokens), spliced, rtol=0, atol=1e-5)
    detach(model, EARLY)
    torch.testing.assert_close(model(tokens), clean, rtol=0, atol=1e-5)
    assert attachments(model) == {} and not any(".itda." in name for name in model.hook_dict)
    with attach(model, itda) as splice:
        torch.testing.assert_close(model(tokens), spliced, rtol=0, atol=1e-5)
    assert attachments(model) == {}
    torch.testing.assert_close(model(tokens), clean, rtol=0, atol=1e-5)


@torch.no_grad()
def test_bridge_canonical_and_legacy_names(bridge, dictionaries):
    itda = dictionaries[EARLY]  # built at the legacy name blocks.3.hook_resid_post
    tokens = bridge.to_tokens(PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same hook point under another name: no warning
        canonical = attach(bridge, itda, "blocks.3.hook_out")
    logits, cache = bridge.run_with_cache(tokens, names_filter=lambda name: ".itda." in name)
    assert sorted(cache) == sorted(f"blocks.3.hook_out.itda.{n}" for n in NAMES)
    with pytest.raises(ValueError, match=r"already attached at 'blocks.3.hook_resid_post' \(attached as 'blocks.3.hook_out'"):
        attach(bridge, itda, EARLY)
    canonical.detach()
    with attach(bridge, itda, EARLY):
        torch.testing.assert_close(bridge(tokens), logits, rtol=0, atol=1e-5)


def test_hook_points_show_sparse_codes_and_dense_only_on_request(model, dictionaries, monkeypatch):
    itda = dictionaries[EARLY]
    dense_calls = []
    dense = ITDA.dense
    monkeypatch.setattr(ITDA, "dense", lambda self, codes: dense_calls.append(codes.indices.shape) or dense(self, codes))
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad(), attach(model, itda) as splice:
        _, cache = model.run_with_cache(tokens)
        codes = splice.codes(cache)
        names = {name for name in cache if ".itda." in name}
        assert names == {f"{EARLY}.itda.{n}" for n in NAMES}
        assert codes.indices.shape == codes.values.shape == (1, tokens.shape[1], itda.k)
        torch.testing.assert_close(cache[EARLY], cache[splice.hook_sae_output.name])  # the model's hook carries the replacement
        x, recon = cache[splice.hook_sae_input.name], cache[splice.hook_sae_recons.name]
        torch.testing.assert_close(recon[:, 1:], itda.decode(itda.encode(x[:, 1:])), rtol=1e-4, atol=1e-4)
        assert (codes.values[:, 0] == 0).all() and (codes.indices[:, 0] == NOT_ENCODED).all()  # BOS is not encoded ...
        assert torch.equal(recon[:, 0], x[:, 0])  # ... and passes through
        torch.testing.assert_close(cache[splice.hook_sae_error.name], x - torch.cat([x[:, :1], recon[:, 1:]], 1))
        _, only = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("itda.hook_values"))
        assert list(only) == [splice.hook_values.name]
    assert dense_calls == [] and not hasattr(splice, "hook_sae_acts_post")
    with torch.no_grad(), attach(model, itda, dense_codes=True) as splice:
        model.run_with_cache(tokens, names_filter=lambda name: ".itda." in name and "acts_post" not in name)
        assert dense_calls == []  # the hook point exists but nothing hooked it
        _, cache = model.run_with_cache(tokens, names_filter=[splice.hook_sae_acts_post.name, splice.hook_sae_recons.name])
    assert len(dense_calls) == 1
    dense_codes = cache[splice.hook_sae_acts_post.name]
    assert dense_codes.shape == (1, tokens.shape[1], itda.n_atoms)
    torch.testing.assert_close((dense_codes @ itda.atoms)[:, 1:], cache[splice.hook_sae_recons.name][:, 1:], rtol=1e-4, atol=1e-4)


def test_error_term_run_equals_clean_and_gradients_reach_the_codes(model, dictionaries):
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        clean = model(tokens)
    seen = {}
    with attach(model, dictionaries[EARLY], error_term=True) as splice:
        keep = [(name, lambda t, hook: seen.__setitem__(hook.name, t)) for name in (splice.hook_values.name, splice.hook_sae_error.name)]
        logits = model.run_with_hooks(tokens, fwd_hooks=keep)
    assert (logits - clean).abs().max() <= 1e-4
    values, error = seen[splice.hook_values.name], seen[splice.hook_sae_error.name]
    assert values.requires_grad and not error.requires_grad
    (grad,) = torch.autograd.grad(logits[0, -1].log_softmax(-1)[_token(model, " Paris")], values)
    assert grad[0, 1:].abs().amax(-1).min() > 0 and (grad[0, 0] == 0).all()


def test_spliced_loss_equals_eval(model, dictionaries, wikitext):
    itda = dictionaries[EARLY]
    batches = list(token_batches(select_split(file_documents(wikitext), "heldout"), model.tokenizer, 64, 4, 250))
    expected = evaluate(model, itda, batches, progress=False)["ce_loss_spliced"]
    with torch.no_grad(), attach(model, itda):
        losses = torch.cat([next_token_losses(model(b.tokens), b.tokens, b.mask) for b in batches])
    assert abs(float(losses.double().mean()) - expected) < 1e-4


@torch.no_grad()
def test_ablating_an_atom_changes_exactly_where_it_was_active(model, dictionaries):
    tokens = model.to_tokens(PROMPT)
    with attach(model, dictionaries[EARLY], error_term=True) as splice:
        names = [splice.hook_indices.name, splice.hook_values.name, splice.hook_sae_output.name]
        clean_logits, clean = model.run_with_cache(tokens, names_filter=names)
        codes = splice.codes(clean)
        active_at = (codes.values != 0)[0]
        counts = torch.bincount(codes.indices[0][active_at], minlength=dictionaries[EARLY].n_atoms)
        atom = int(((counts > 1) & (counts < tokens.shape[1] - 2)).nonzero()[0])  # active at some positions, not all
        active = ((codes.indices == atom) & (codes.values != 0)).any(-1)
        with splice.ablate(atom):
            logits, ablated = model.run_with_cache(tokens, names_filter=names)
        changed = (ablated[splice.hook_sae_output.name] - clean[splice.hook_sae_output.name]).abs().amax(-1) > 0
        assert torch.equal(changed, active)
        assert (splice.codes(ablated).values[splice.codes(ablated).indices == atom] == 0).all()
        first = int(active[0].nonzero()[0])
        torch.testing.assert_close(logits[:, :first], clean_logits[:, :first], rtol=0, atol=1e-5)  # causal
        with splice.ablate(atom, positions=[first]):
            _, one = model.run_with_cache(tokens, names_filter=names)
        changed = (one[splice.hook_sae_output.name] - clean[splice.hook_sae_output.name]).abs().amax(-1) > 0
        assert changed[0].nonzero().flatten().tolist() == [first]
        (loss_change,) = measure_ablations(model, tokens, atom, "loss")
        paris = logit_diff(_token(model, " Berlin"), _token(model, " Paris"))
        effects = measure_ablations(model, tokens, [atom, [atom], [atom, atom]], paris)
        with splice.ablate(atom):
            manual = paris(model(tokens)) - paris(clean_logits)
    assert loss_change != 0 and effects[0] == effects[1] == effects[2] != 0
    assert abs(float(manual) - float(effects[0])) < 1e-4


@torch.no_grad()
def test_clamp_sets_the_coefficient(model, dictionaries):
    itda = dictionaries[EARLY]
    tokens = model.to_tokens(PROMPT)
    with attach(model, itda, error_term=True) as splice:
        names = [splice.hook_indices.name, splice.hook_values.name, splice.hook_sae_recons.name]
        _, clean = model.run_with_cache(tokens, names_filter=names)
        atom = int(splice.codes(clean).indices[0, 1, 0])
        with splice.clamp(atom, 5.0, positions=slice(1, None)):
            _, clamped = model.run_with_cache(tokens, names_filter=names)
        with splice.ablate([1, 2]), splice.ablate([1, 2]), splice.steer(3, 1.0):  # edits stack and unwind
            model(tokens)
        assert splice._edits == []
    codes, before = splice.codes(clamped), splice.codes(clean)
    total = (codes.values * (codes.indices == atom)).sum(-1)[0]
    assert torch.allclose(total[1:], torch.full_like(total[1:], 5.0)) and total[0] == 0
    old = (before.values * (before.indices == atom)).sum(-1)[0]
    shift = clamped[splice.hook_sae_recons.name] - clean[splice.hook_sae_recons.name]
    torch.testing.assert_close(shift[0, 1:], (5.0 - old[1:, None]) * itda.atoms[atom], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_steering_during_generate_prompt_only_or_new_tokens(model, dictionaries):
    with attach(model, dictionaries[EARLY]) as splice:
        atom = 7
        for positions, on_prompt, on_new in (([-1], [-1], False), ("new", [], True), ("all", "all", True)):
            steered = []

            def record(values, hook, steered=steered):
                steered.append(values[0, :, -1].clone())  # the steering slot is the last one

            steering = splice.steer(atom, 30.0, positions=positions)
            with steering, model.hooks(fwd_hooks=[(splice.hook_values.name, record)]):
                model.generate(PROMPT, max_new_tokens=3, do_sample=False, verbose=False)
            prompt, *generated = steered
            expected = torch.zeros_like(prompt)
            expected[1:] = 30.0 if on_prompt == "all" else 0.0  # BOS is never encoded, so never steered
            expected[on_prompt if on_prompt != "all" else []] = 30.0
            assert torch.equal(prompt, expected), positions
            assert len(generated) >= 2 and all(v.tolist() == [30.0 if on_new else 0.0] for v in generated)


@torch.no_grad()
def test_steering_raises_the_log_prob_of_the_atoms_own_token(primary, dictionaries, wikitext):
    itda = dictionaries[LATE]
    prompts = ["The weather today is", "My favourite food is", "In 1990 the company", "She opened the door and", "The results of the study"]
    tokens = torch.cat([primary.to_tokens(p)[:, :5] for p in prompts])
    calibration = next(iter(token_batches(select_split(file_documents(wikitext), "heldout"), primary.tokenizer, 64, 8, 500)))
    with attach(primary, itda, error_term=True) as splice:
        typical = splice.calibrate(calibration.tokens)
        seen = (~typical.isnan()).nonzero().flatten()
        atoms = seen[torch.randperm(len(seen), generator=torch.Generator().manual_seed(0))[:12]].tolist()
        base = primary(tokens)[:, -1].log_softmax(-1)
        rises = []
        for atom in atoms:
            own = int(itda.provenance.token_id[atom])
            with splice.steer(atom, 2.0, relative=True, positions=[-1]):
                rises.append(primary(tokens)[:, -1].log_softmax(-1)[:, own] - base[:, own])
        with splice.steer(atoms[0], 2.0 * float(typical[atoms[0]]), positions=[-1]):  # the same, as an absolute scale
            absolute = primary(tokens)[:, -1].log_softmax(-1) - base
        torch.testing.assert_close(absolute[:, int(itda.provenance.token_id[atoms[0]])], rises[0])
    rises = torch.stack(rises)  # [atoms, prompts]
    assert rises.mean() > 0.3, rises
    assert (rises.mean(1) > 0).float().mean() >= 0.75, rises


def test_attribution_agrees_with_ablation(primary, dictionaries):
    metric = logit_diff(_token(primary, " Mary"), _token(primary, " John"))
    with attach(primary, dictionaries[LATE]):
        attribution = attribute(primary, IOI, metric)
        atoms, estimates = attribution.by_atom()
        measured = measure_ablations(primary, IOI, atoms[:20], metric)
        check = attribution.verify(20)
    seq = primary.to_tokens(IOI).shape[1]
    assert attribution.attribution.shape == attribution.indices.shape == (1, seq, dictionaries[LATE].k)
    assert attribution.metric > 0 and attribution.error.shape == (1, seq)
    rho = spearman(estimates[:20], measured)  # the estimate is of the ablation's effect: same sign
    assert rho >= 0.7, f"Spearman {rho:.3f}"
    assert check.atoms == atoms[:20].tolist() and torch.equal(check.measured, measured) and check.spearman == rho
    assert check.ratio == float(measured.abs().sum() / estimates[:20].abs().sum()) and "Spearman" in str(check)
    top = attribution.top(3)
    assert [row.atom for row in top] == atoms[:3].tolist()
    assert all(row.source_token == dictionaries[LATE].provenance.token[row.atom] and row.positions for row in top)
    assert str(top[0]).startswith(f"atom {top[0].atom:>6}") and "[" in top[0].context()
    table = attribution.table(3)
    share = attribution.error_share()
    assert f"error term: {float(attribution.error.sum()):+.4f}, {share:.0%} of all |attribution|" in table and 0 < share < 1
    many = [row for row in top if len(row.positions) >= 3]
    assert table.count("*") == len(many) + bool(many) and table.count("\n") == 4 + bool(many)


def test_several_dictionaries_at_once(model, dictionaries):
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        clean = model(tokens)
    with attach_all(model, dictionaries, error_term=True) as both:
        assert sorted(both) == sorted(attachments(model)) == sorted([EARLY, LATE])
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("itda.hook_values"))
        assert sorted(cache) == sorted(f"{hook}.itda.hook_values" for hook in (EARLY, LATE))
        assert (logits - clean).abs().max() <= 1e-4
        results = attribute_all(model, tokens, log_prob(_token(model, " Paris"), position=5))
        assert sorted(results) == sorted([EARLY, LATE])
        assert all(r.attribution[0, 1:6].abs().sum() > 0 and (r.attribution[0, 6:] == 0).all() for r in results.values())
    assert attachments(model) == {}


def test_bad_input(model, dictionaries):
    itda = dictionaries[EARLY]
    with pytest.raises(ValueError, match=r"no hook point 'blocks.3.hook_resid_pots'.*blocks.3.hook_resid_post"):
        attach(model, itda, "blocks.3.hook_resid_pots")
    with pytest.raises(ValueError, match="width 100 but blocks.3.hook_resid_post has width 576"):
        attach(model, ITDA.from_atoms(torch.randn(20, 100), k=4), EARLY)
    other = ITDA.from_atoms(itda.atoms, k=4, model="gpt2", hook=EARLY)
    with pytest.warns(UserWarning, match="built for model 'gpt2', not 'smollm2-135m-instruct'"):
        splice = attach(model, other)
    with pytest.raises(ValueError, match="already attached at 'blocks.3.hook_resid_post'.*detach"):
        attach(model, itda)
    n = itda.n_atoms
    with pytest.raises(IndexError, match=rf"atoms \[{n}\] are out of range.*has {n} atoms \(0 to {n - 1}\)"):
        splice.steer(itda.n_atoms, 1.0)
    with pytest.raises(IndexError, match=r"atoms \[-1\] are out of range"):
        splice.ablate(-1)
    with pytest.raises(TypeError, match=r"atoms must be indices .*got 3.7 \(a float\)"):
        splice.steer(3.7, 1.0)  # not atom 3
    with pytest.raises(ValueError, match="scale must be a finite number, got nan"):
        splice.steer(3, float("nan"))
    with pytest.raises(ValueError, match=r"not calibrated: call calibrate\(text\) first"):
        splice.steer(0, 1.0, relative=True)
    splice.detach()
    with pytest.raises(ValueError, match="no dictionary is attached"):
        attached(model)
    with pytest.raises(ValueError, match="the dictionary does not record its hook point"):
        attach(model, ITDA.from_atoms(itda.atoms, k=4))
