"""Evaluating a dictionary on text: reconstruction and the model's loss with it spliced in."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from itda_lens.backends.transformer_lens import check_compatible, replace_hook, run_from, run_until, start_block
from itda_lens.core.activations import check_activations
from itda_lens.core.itda import ITDA
from itda_lens.core.metrics import LossMetrics, ReconstructionMetrics, next_token_losses
from itda_lens.core.text import TokenBatch


@torch.no_grad()
def evaluate(
    model, itda: ITDA, batches: Iterable[TokenBatch], hook: str | None = None, total_tokens: int | None = None, progress: bool = True
) -> dict[str, float]:
    """FVU, MSE, cosine, L0 and clean / spliced / zero-ablated losses of ``itda`` at
    ``hook`` (default: the hook it was built at) of a TransformerLens ``model``, with the
    number of ``tokens`` scored and of ``documents`` they came from.

    The spliced run replaces the activation with its reconstruction at every scored
    position (BOS and padding keep theirs); the zero-ablated run puts zeros there.

    At a residual-stream hook (``blocks.L.hook_resid_pre``, or ``hook_resid_post`` of any
    block but the last; see :func:`~itda_lens.backends.transformer_lens.start_block`) the
    model runs once up to the hook, then once from it on over the clean, spliced and
    zero-ablated activations stacked along the batch, three times the batch in memory
    (:func:`~itda_lens.backends.transformer_lens.run_from`). At any other hook point, and
    on TransformerLens 3's ``TransformerBridge``, it runs three whole forward passes.
    """
    hook = hook or itda.config.hook
    if hook is None:
        raise ValueError("the dictionary does not record its hook point; pass hook=.")
    check_compatible(model, itda, hook)
    block = start_block(model, hook)
    device = next(model.parameters()).device
    recon, losses = ReconstructionMetrics(), LossMetrics()
    documents: set[int] = set()
    bar = tqdm(total=total_tokens, unit="tok", desc="evaluating", disable=not progress)
    for batch in batches:
        tokens, mask = batch.tokens.to(device), batch.mask.to(device)
        if block is None:
            logits, cache = model.run_with_cache(tokens, names_filter=[hook], return_cache_object=False)
            x = cache[hook]
        else:
            x = run_until(model, block, tokens)
        check_activations(hook, x, tokens, itda.d_model)
        codes = itda.encode(x[mask])
        x_hat = itda.decode(codes).to(x.dtype)
        recon.update(x[mask], x_hat, codes)
        filled = torch.zeros_like(x)
        filled[mask] = x_hat
        spliced, zero = replace_hook(filled, mask), replace_hook(torch.zeros_like(x), mask)
        if block is None:
            outputs = logits, *(model.run_with_hooks(tokens, fwd_hooks=[(hook, fn)]) for fn in (spliced, zero))
        else:
            outputs = run_from(model, block, torch.cat([x, spliced(x), zero(x)])).chunk(3)
        losses.update(*(next_token_losses(out, tokens, mask) for out in outputs))
        documents.update(batch.documents)
        bar.update(batch.n_tokens)
    bar.close()
    return {"n_atoms": itda.n_atoms, "k": itda.k, "tokens": recon.tokens, "documents": len(documents), **recon.result(), **losses.result()}
