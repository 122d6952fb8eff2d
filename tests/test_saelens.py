"""An ITDA as a SAE Lens SAE in HookedSAETransformer, SAETransformerBridge and run_evals, on
the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import pytest
import torch

from itda_lens.core.config import BuildSettings

pytest.importorskip("sae_lens")
pytestmark = pytest.mark.tl3

from sae_lens import SAE  # noqa: E402

from itda_lens import ITDA  # noqa: E402
from itda_lens.backends.saelens import ITDASAE, ITDASAEConfig, hooked_sae_transformer, sae_transformer_bridge  # noqa: E402
from itda_lens.backends.transformer_lens import attach  # noqa: E402
from itda_lens.core.activations import TransformerLensSource  # noqa: E402
from itda_lens.core.build import build  # noqa: E402
from itda_lens.core.text import TokenBatch, file_documents, select_split, token_batches  # noqa: E402
from itda_lens.tools.evaluate import evaluate  # noqa: E402

HOOK = "blocks.3.hook_resid_post"
PROMPT = "The capital of France is Paris, and the capital of Germany is Berlin."


@pytest.fixture(scope="module")
def hooked():
    from itda_lens.backends.models import load_model

    return load_model(backend="hooked_transformer")


@pytest.fixture(scope="module")
def model(hooked):
    return hooked_sae_transformer(hooked)


@pytest.fixture(scope="module")
def itda(hooked, wikitext) -> ITDA:
    batches = token_batches(select_split(file_documents(wikitext), "train"), hooked.tokenizer, 64, 8, 2000)
    return build(TransformerLensSource(hooked, [HOOK]), batches, BuildSettings(k=16, threshold=0.15), progress=False).dictionaries[HOOK]


@pytest.fixture
def sae(itda) -> ITDASAE:
    return ITDASAE.from_itda(itda)


@torch.no_grad()
def test_add_sae_with_error_term_runs_clean_and_caches_codes(model, sae, itda):
    tokens = model.to_tokens(PROMPT)
    clean = model(tokens)
    model.add_sae(sae, use_error_term=True)
    try:
        logits, cache = model.run_with_cache(tokens)
    finally:
        model.reset_saes()
    assert (logits - clean).abs().max() <= 1e-4
    acts = cache[f"{HOOK}.hook_sae_acts_post"]
    assert acts.shape == (1, tokens.shape[1], itda.n_atoms)
    assert ((acts != 0).sum(-1) <= itda.k).all()
    x = cache[f"{HOOK}.hook_sae_input"]
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_recons"], itda.decode(itda.encode(x)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec, itda.atoms)
    assert sae.cfg.metadata.hook_name == HOOK and sae.cfg.d_sae == itda.n_atoms
    torch.testing.assert_close(model(tokens), clean, rtol=0, atol=1e-5)  # reset_saes restores the model


@torch.no_grad()
def test_spliced_run_and_feature_ablation_match_attach(model, hooked, sae, itda):
    tokens = model.to_tokens(PROMPT)
    spliced = model.run_with_saes(tokens, saes=[sae], use_error_term=False)  # BOS left alone by default
    every_position = model.run_with_saes(tokens, saes=[sae], use_error_term=False, exclude_special_tokens=[])
    assert (every_position - spliced).abs().max() > 1e-2
    with attach(hooked, itda) as splice:
        torch.testing.assert_close(hooked(tokens), spliced, rtol=1e-4, atol=1e-4)
        splice.error_term = True
        codes = itda.encode(model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK][0, 1:])
        atom = int(codes.indices[2, 0])
        with splice.ablate(atom):
            ours = hooked(tokens)

    def zero_atom(acts, hook):
        acts[..., atom] = 0.0
        return acts

    with model.saes(saes=[sae], use_error_term=True):
        theirs = model.run_with_hooks(tokens, fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", zero_atom)])
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_sae_transformer_bridge_leaves_bos_alone_like_attach(sae, itda):
    from itda_lens.backends.models import load_model

    bridge = load_model()
    tokens = bridge.to_tokens(PROMPT)
    with attach(bridge, itda):
        ours = bridge(tokens)
    model = sae_transformer_bridge(bridge)
    assert sae_transformer_bridge(model) is model
    torch.testing.assert_close(model.run_with_saes(tokens, saes=[sae]), ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.run_with_saes(PROMPT, saes=[sae]), ours, rtol=1e-4, atol=1e-4)
    model.add_sae(sae, exclude_special_tokens=[])
    try:
        every_position, cache = model.run_with_cache(tokens)
    finally:
        model.reset_saes()
    assert (every_position - ours).abs().max() > 1e-2
    acts = cache[model.get_sae_hook_name(sae)]
    torch.testing.assert_close(acts, itda.encode(cache[model.get_sae_hook_name(sae, "hook_sae_input")]).to_dense(itda.n_atoms))


def test_run_evals_agrees_with_itda_lens_eval(hooked, sae, itda, wikitext):
    from datasets import Dataset
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    batch = next(token_batches(select_split(file_documents(wikitext), "heldout"), hooked.tokenizer, 48, 16))
    full = batch.mask[:, 1:].all(1)  # rows without padding: the same tokens count in both
    rows = TokenBatch(
        **{name: getattr(batch, name)[full][:4] for name in ("tokens", "mask", "doc", "token_index", "char_start", "char_end")}, documents=batch.documents
    )
    assert len(rows.tokens) == 4
    ours = evaluate(hooked, itda, [rows], progress=False)
    store = ActivationsStore(
        hooked,
        Dataset.from_dict({"tokens": rows.tokens.tolist()}),
        streaming=False,
        hook_name=HOOK,
        hook_head_index=None,
        context_size=48,
        d_in=itda.d_model,
        n_batches_in_buffer=1,
        total_training_tokens=4,
        store_batch_size_prompts=4,
        train_batch_size_tokens=192,
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )
    config = EvalConfig(n_eval_reconstruction_batches=1, compute_ce_loss=True, compute_sparsity_metrics=True, compute_variance_metrics=True)
    theirs, _ = run_evals(sae, store, hooked, ActivationScaler(), config)
    ce, quality, sparsity = theirs["model_performance_preservation"], theirs["reconstruction_quality"], theirs["sparsity"]
    assert ce["ce_loss_without_sae"] == pytest.approx(ours["ce_loss_clean"], rel=1e-5)
    assert ce["ce_loss_with_sae"] == pytest.approx(ours["ce_loss_spliced"], rel=1e-4)
    assert quality["explained_variance"] == pytest.approx(1 - ours["fvu"], abs=1e-4)
    assert quality["mse"] == pytest.approx(ours["mse"] * itda.d_model, rel=1e-4)  # summed over dimensions there
    assert quality["cossim"] == pytest.approx(ours["cosine"], rel=1e-4)
    assert sparsity["l0"] == pytest.approx(ours["l0"], rel=1e-6)


def test_saved_and_loaded_by_sae_lens(sae, itda, tmp_path):
    sae.save_model(tmp_path)
    loaded = SAE.load_from_disk(str(tmp_path))
    assert isinstance(loaded, ITDASAE) and loaded.cfg.k == itda.k
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    torch.testing.assert_close(loaded.W_dec, itda.W_dec)
    x = torch.randn(5, itda.d_model) * 10
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    assert sae.to_itda().provenance.token == itda.provenance.token


def test_bad_input(itda):
    with pytest.raises(ValueError, match="does not record its hook point"):
        ITDASAE.from_itda(ITDA.from_atoms(itda.atoms, k=4))
    with pytest.raises(TypeError, match="expected a HookedTransformer, got Linear"):
        hooked_sae_transformer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected a TransformerBridge without SAEs, got Linear; make it with load_model"):
        sae_transformer_bridge(torch.nn.Linear(2, 2))
    with pytest.raises(AttributeError, match="W_enc is W_dec.T"):
        ITDASAE.from_itda(itda).W_enc = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(TypeError, match="from_itda takes an ITDA, got Tensor"):
        ITDASAE.from_itda(itda.atoms)
    with pytest.raises(ValueError, match=r"k must be an int from 1 to 10, got 11"):
        ITDASAEConfig(d_in=8, d_sae=10, k=11)
    with pytest.raises(TypeError, match=r"k must be an int, got 2.5"):
        ITDASAEConfig(d_in=8, d_sae=10, k=2.5)
    with pytest.raises(TypeError, match="refit must be True or False"):
        ITDASAEConfig(d_in=8, d_sae=10, k=2, refit="yes")
