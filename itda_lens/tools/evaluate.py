"""Evaluating a dictionary on text: reconstruction and the model's loss with it spliced in."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from itda_lens.backends.transformer_lens import check_compatible, replace_hook
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
    """
    hook = hook or itda.config.hook
    if hook is None:
        raise ValueError("the dictionary does not record its hook point; pass hook=.")
    check_compatible(model, itda, hook)
    device = next(model.parameters()).device
    recon, losses = ReconstructionMetrics(), LossMetrics()
    documents: set[int] = set()
    bar = tqdm(total=total_tokens, unit="tok", desc="evaluating", disable=not progress)
    for batch in batches:
        tokens, mask = batch.tokens.to(device), batch.mask.to(device)
        logits, cache = model.run_with_cache(tokens, names_filter=[hook], return_cache_object=False)
        x = cache[hook]
        check_activations(hook, x, tokens, itda.d_model)
        codes = itda.encode(x[mask])
        x_hat = itda.decode(codes).to(x.dtype)
        recon.update(x[mask], x_hat, codes)
        filled = torch.zeros_like(x)
        filled[mask] = x_hat
        spliced = model.run_with_hooks(tokens, fwd_hooks=[(hook, replace_hook(filled, mask))])
        zero = model.run_with_hooks(tokens, fwd_hooks=[(hook, replace_hook(torch.zeros_like(x), mask))])
        losses.update(*(next_token_losses(out, tokens, mask) for out in (logits, spliced, zero)))
        documents.update(batch.documents)
        bar.update(batch.n_tokens)
    bar.close()
    return {"n_atoms": itda.n_atoms, "k": itda.k, "tokens": recon.tokens, "documents": len(documents), **recon.result(), **losses.result()}
