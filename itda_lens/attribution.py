"""What atoms do to a metric: measured by ablation, estimated by attribution.

A metric maps the model's logits ``[batch, pos, vocab]`` to a scalar tensor; build one
with :func:`logit_diff`, :func:`log_prob` or :func:`next_token_loss`, or pass your own.

- :func:`ablate` / :func:`ablation_effects` run the model with atoms removed and return
  ``metric(ablated) - metric(unablated)``.
- :func:`attribute` takes one forward and one backward pass and gives, for every
  (position, atom) of the sparse codes, ``attribution = d metric / d value * value``
  (gradient x activation). Ablating that atom there changes the metric by about
  ``-attribution``: the attribution-patching estimate of the ablation above.

Both work on dictionaries attached with :func:`itda_lens.transformer_lens.attach` and,
by default, switch the error term on while they run, so the unablated run is the clean
model and the estimates are local to it.

The estimate is first order. It ranks atoms well where the layers after the hook are few
enough to be near-linear in one atom's removal: on SmolLM2-135M at layer 15 of 30 the
Spearman correlation between estimated and measured effects of the top 20 atoms was
0.75 to 0.93 over three prompts (logit differences), at layer 3 as low as -0.1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from itda_lens import checks
from itda_lens.itda import ITDA
from itda_lens.transformer_lens import AttachedITDA, Positions, attached, attachments

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]]

__all__ = [
    "AtomAttribution",
    "Attribution",
    "Metric",
    "ablate",
    "ablation_effects",
    "attribute",
    "attribute_all",
    "log_prob",
    "logit_diff",
    "next_token_loss",
]


# --------------------------------------------------------------------------- metrics
def logit_diff(correct: int, wrong: int, position: int = -1) -> Metric:
    """Logit of ``correct`` minus logit of ``wrong`` at ``position``, mean over the batch."""
    correct, wrong = checks.integer(correct, "correct", low=0), checks.integer(wrong, "wrong", low=0)
    position = checks.integer(position, "position")

    def metric(logits: Tensor) -> Tensor:
        at = logits[:, position].float()
        return (at[:, correct] - at[:, wrong]).mean()

    return metric


def log_prob(token: int, position: int = -1) -> Metric:
    """Log-probability of ``token`` at ``position``, mean over the batch."""
    token, position = checks.integer(token, "token", low=0), checks.integer(position, "position")

    def metric(logits: Tensor) -> Tensor:
        return logits[:, position].float().log_softmax(-1)[:, token].mean()

    return metric


def next_token_loss(tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"] | None = None) -> Metric:
    """Mean next-token cross-entropy on ``tokens``, counted where ``mask`` holds at a
    position and the next one (default: every position after the first)."""
    from itda_lens.metrics import next_token_losses

    if mask is None:
        mask = torch.ones_like(tokens, dtype=torch.bool)
        mask[:, 0] = False

    def metric(logits: Tensor) -> Tensor:
        return next_token_losses(logits, tokens, mask.to(tokens.device)).mean()

    return metric


def _as_metric(metric: Metric | str, tokens: Tensor) -> Metric:
    if metric == "loss":
        return next_token_loss(tokens)
    if callable(metric):
        return metric
    raise ValueError(f"metric must be a callable on logits or 'loss', got {metric!r}.")


def _as_tokens(model, tokens) -> Int[Tensor, "batch pos"]:
    if isinstance(tokens, (str, list)):
        tokens = model.to_tokens(tokens)
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError("tokens must be a string, a list of strings or integer token ids of shape [batch, pos].")
    return tokens.to(next(model.parameters()).device)


@contextmanager
def _error_term(splices: Sequence[AttachedITDA], on: bool | None) -> Iterator[None]:
    before = [s.error_term for s in splices]
    if on is not None:
        checks.flag(on, "error_term")
        for splice in splices:
            splice.error_term = on
    try:
        yield
    finally:
        for splice, was in zip(splices, before):
            splice.error_term = was


def _scalar(value: Tensor) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(f"the metric must return a scalar tensor, got {getattr(value, 'shape', value)!r}.")
    return value.reshape(())


# --------------------------------------------------------------------------- ablation
def ablation_effects(
    model,
    tokens,
    atoms: Sequence[int] | Tensor,
    metric: Metric | str,
    *,
    hook: str | None = None,
    positions: Positions = None,
    error_term: bool | None = True,
) -> Float[Tensor, " n"]:
    """``metric(ablated) - metric(unablated)`` for each atom of ``atoms`` ablated on its
    own at ``positions`` (default: all), one forward pass per atom.

    ``hook`` picks the attached dictionary (default: the only one); ``error_term``
    sets its error term while measuring (``None``: as attached).
    """
    splice = attached(model, hook)
    tokens = _as_tokens(model, tokens)
    metric = _as_metric(metric, tokens)
    atoms = splice.atom_indices(atoms)
    effects = torch.empty(len(atoms), dtype=torch.float64)
    with _error_term([splice], error_term), torch.no_grad():
        base = _scalar(metric(model(tokens)))
        for number, atom in enumerate(atoms.tolist()):
            with splice.ablate(atom, positions):
                effects[number] = float(_scalar(metric(model(tokens))) - base)
    return effects


def ablate(
    model,
    tokens,
    atoms: int | Sequence[int] | Tensor,
    metric: Metric | str,
    *,
    hook: str | None = None,
    positions: Positions = None,
    error_term: bool | None = True,
) -> float:
    """``metric(ablated) - metric(unablated)`` with all of ``atoms`` ablated together at
    ``positions`` (default: all). Arguments as in :func:`ablation_effects`."""
    splice = attached(model, hook)
    tokens = _as_tokens(model, tokens)
    metric = _as_metric(metric, tokens)
    with _error_term([splice], error_term), torch.no_grad():
        base = _scalar(metric(model(tokens)))
        with splice.ablate(atoms, positions):
            return float(_scalar(metric(model(tokens))) - base)


# --------------------------------------------------------------------------- attribution
@dataclass
class AtomAttribution:
    """One atom's total attribution in a prompt, with where it came from."""

    atom: int
    attribution: float
    positions: list[tuple[int, int]]
    prompt_tokens: list[str]
    source_token: str
    source_before: str
    source_after: str

    def context(self, width: int = 40) -> str:
        """The atom's source text, its own token in ``[ ]``, on one line."""
        text = f"{self.source_before[-width:]}[{self.source_token}]{self.source_after[:width]}"
        return text.replace("\n", "\\n")

    def __str__(self) -> str:
        where = ", ".join(f"{tok!r}@{pos}" for (_, pos), tok in zip(self.positions[:4], self.prompt_tokens[:4]))
        more = f" +{len(self.positions) - 4}" if len(self.positions) > 4 else ""
        return f"atom {self.atom:>6} {self.attribution:+.4f}  at {where}{more}  from: {self.context()}"


@dataclass
class Attribution:
    """Gradient x activation of a metric for every (position, atom) of the sparse codes
    at one hook. ``-attribution`` estimates the metric's change when that atom is
    ablated at that position; ``error`` is the same for the error term (``None``
    without it)."""

    hook: str
    itda: ITDA
    metric: float
    tokens: Int[Tensor, "batch pos"]
    indices: Int[Tensor, "batch pos k"]
    values: Float[Tensor, "batch pos k"]
    attribution: Float[Tensor, "batch pos k"]
    error: Float[Tensor, "batch pos"] | None
    token_texts: list[list[str]] = field(default_factory=list)

    def by_atom(self) -> tuple[Int[Tensor, " m"], Float[Tensor, " m"]]:
        """The atoms active anywhere and their attribution summed over positions
        (the estimate for ablating each everywhere), largest magnitude first."""
        active = self.values != 0
        atoms = self.indices[active]
        totals = torch.zeros(self.itda.n_atoms, dtype=torch.float64, device=atoms.device)
        totals.index_add_(0, atoms, self.attribution[active].double())
        unique = atoms.unique()
        order = totals[unique].abs().argsort(descending=True)
        return unique[order].cpu(), totals[unique][order].cpu()

    def top(self, n: int = 10) -> list[AtomAttribution]:
        """The ``n`` atoms of largest total |attribution|, with their source context."""
        atoms, totals = self.by_atom()
        rows = []
        provenance = self.itda.provenance
        for atom, total in zip(atoms[:n].tolist(), totals[:n].tolist()):
            where = ((self.indices == atom) & (self.values != 0)).any(-1).nonzero().tolist()
            texts = [self.token_texts[b][p] if self.token_texts else "" for b, p in where]
            rows.append(
                AtomAttribution(
                    atom, total, [tuple(w) for w in where], texts,
                    provenance.token[atom], provenance.before[atom], provenance.after[atom],
                )
            )
        return rows

    def table(self, n: int = 10) -> str:
        """:meth:`top` as lines of text."""
        header = f"{self.hook}: metric {self.metric:.4f}; top {n} atoms by |gradient x coefficient|"
        return "\n".join([header, *(str(row) for row in self.top(n))])


def attribute_all(model, tokens, metric: Metric | str, *, error_term: bool | None = True) -> dict[str, Attribution]:
    """:func:`attribute` for every attached dictionary, in one forward and one backward pass."""
    splices = attachments(model)
    if not splices:
        raise ValueError("no dictionary is attached: call attach(model, itda) first.")
    return _attribute(model, tokens, metric, list(splices.values()), error_term)


def attribute(model, tokens, metric: Metric | str, *, hook: str | None = None, error_term: bool | None = True) -> Attribution:
    """Gradient x activation of ``metric`` for every (position, atom) of the dictionary at
    ``hook`` (default: the only one attached), from one forward and one backward pass.

    ``error_term`` (default on) makes the forward pass the clean model's, so the
    estimates are local to it. Gradients flow through every attached dictionary.
    """
    splice = attached(model, hook)
    others = [s for s in attachments(model).values() if s is not splice]
    return _attribute(model, tokens, metric, [splice, *others], error_term)[splice.hook]


def _attribute(model, tokens, metric, splices: list[AttachedITDA], error_term: bool | None) -> dict[str, Attribution]:
    tokens = _as_tokens(model, tokens)
    metric = _as_metric(metric, tokens)
    with ExitStack() as stack:
        stack.enter_context(_error_term(splices, error_term))
        for splice in splices:
            splice._recording, splice._record = True, None
            stack.callback(setattr, splice, "_recording", False)
        with torch.enable_grad():
            value = _scalar(metric(model(tokens)))
        records = [splice._record for splice in splices]
        for splice in splices:
            splice._record = None
    missing = [s.hook for s, r in zip(splices, records) if r is None]
    if missing:
        raise RuntimeError(f"the dictionaries at {missing} did not run in this forward pass.")
    targets = [r.values for r in records] + [r.error for r in records if r.error is not None]
    grads = torch.autograd.grad(value, targets, allow_unused=True)
    value_grads, error_grads = grads[: len(records)], iter(grads[len(records) :])
    tokenizer = getattr(model, "tokenizer", None)
    texts = [tokenizer.convert_ids_to_tokens(row) for row in tokens.tolist()] if tokenizer is not None else []
    result = {}
    for splice, record, grad in zip(splices, records, value_grads):
        values = record.values.detach()
        grad = torch.zeros_like(values) if grad is None else grad
        error = None
        if record.error is not None:
            error_grad = next(error_grads)
            error = torch.zeros(values.shape[:2]) if error_grad is None else (error_grad * record.error.detach()).sum(-1)
        result[splice.hook] = Attribution(
            splice.hook, splice.itda, float(value.detach()), tokens.cpu(), record.indices.detach().cpu(), values.cpu(),
            (grad * values).cpu(), None if error is None else error.detach().cpu(), texts,
        )
    return result
