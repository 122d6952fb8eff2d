"""Building dictionaries next to the model, in nnsight sessions: on NDIF, or locally in
nnsight's simulation of it (``remote="local"``).

A :class:`ServerBuilder` is the :class:`~itda_lens.core.build.Grower` that
:func:`~itda_lens.core.build.build` takes in place of an activation source. Each call
runs one ``lm.session`` for :attr:`~itda_lens.core.config.SessionSettings.session_batches`
batches: the dictionary so far goes up once (float32 unit atoms, with the sizes it grew
by, so the Gram matrix is rebuilt exactly), each batch's trace reads the hook points and
stops, and :class:`~itda_lens.core.build.GrowingDictionary`, the client's own rule,
grows the dictionary there. Only the activations that became atoms (in the model's dtype)
and, per batch, the rows taken and the share of tokens reconstructed worse than the
threshold come back; the client turns them into atoms and provenance as a local build
does, so both give the same dictionary up to float rounding::

    from itda_lens.backends.nnsight_build import ServerBuilder

    grower = ServerBuilder(lm, ["model.layers.40"], remote=True)     # or remote="local"
    result = build(grower, batches, BuildSettings(max_atoms=8192), checkpoint_dir="ckpt", checkpoint_every=1)

What runs in the session uses only torch and the standard library (``itda_lens`` travels
by value, as for :mod:`itda_lens.backends.nnsight`). Sessions go through a
:class:`~itda_lens.backends.nnsight.RetryingBackend`: transient errors are retried, and a
session above ``max_request_bytes`` is refused before it is sent.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import nnsight
import torch
import torch.nn.functional as F

from itda_lens.backends.nnsight import PayloadTooLarge, RetryingBackend
from itda_lens.backends.nnsight_source import NnsightSource
from itda_lens.core.build import DictionaryBuilder, GrowingDictionary
from itda_lens.core.config import DEFAULT_SESSIONS, SessionSettings

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

    from itda_lens.core.text import TokenBatch

#: What :meth:`~itda_lens.core.build.GrowingDictionary.update` returns for a batch, per hook.
Outcome = dict[str, tuple[list[int], float]]


def grow_in_session(
    source: NnsightSource,
    tokens: list[Int[Tensor, "batch seq"]],
    positions: list[Int[Tensor, " n"]],
    sent: dict[str, tuple[Float[Tensor, "n_atoms d_model"], list[int]]],
    settings: dict[str, Any],
    max_result_bytes: int | None = None,
) -> tuple[dict[str, tuple[Float[Tensor, "a d_model"], list[int]]], list[Outcome]]:
    """Inside ``lm.session``, next to the model: grow each hook's dictionary (``sent``:
    its unit atoms and the sizes it grew by) from the encoded ``positions`` (flat
    indices) of each batch of ``tokens``, with the :class:`~itda_lens.core.config.BuildSettings`
    fields ``settings``.

    Returns, per hook, the activations that became atoms (model dtype, on the CPU) and
    the sizes the dictionary grew by past ``sent``; and per batch what ``update`` returned.
    Batches stop once every dictionary is full, or before the activations returned would
    pass ``max_result_bytes``.
    """
    growers: dict[str, GrowingDictionary] = {}
    found: dict[str, list[Tensor]] = {}
    outcomes: list[Outcome] = []
    size = 0
    for batch_tokens, batch_positions in zip(tokens, positions):
        if growers and all(grower.full for grower in growers.values()):
            break  # as the client build stops reading
        activations = source(batch_tokens)  # a trace in the session: reads the hooks, then stops
        outcome, rows = {}, {}
        for hook, x in activations.items():
            x = x.detach().flatten(0, 1)[batch_positions.to(x.device)]
            if hook not in growers:
                growers[hook] = GrowingDictionary(x.shape[-1], **settings, device=x.device)
                growers[hook].extend(*sent[hook])
                found[hook] = [x[:0].cpu()]
            outcome[hook] = growers[hook].update(x)
            rows[hook] = x[outcome[hook][0]].cpu()
        grown = sum(row.numel() * row.element_size() for row in rows.values())
        if max_result_bytes is not None and size + grown > max_result_bytes:
            break
        size += grown
        outcomes.append(outcome)
        for hook, row in rows.items():
            found[hook].append(row)
    result = {}
    for hook, grower in growers.items():
        atoms = torch.cat(found[hook])
        end = len(sent[hook][0]) + len(atoms)
        result[hook] = (atoms, [group for group in grower.groups[len(sent[hook][1]) :] if group <= end])
    return result, outcomes


class ServerBuilder:
    """Grows dictionaries at ``modules`` of an nnsight ``model`` in sessions next to it
    (see the module's text): on NDIF (``remote=True`` or a host URL) or in nnsight's local
    simulation of it (``remote="local"``).

    ``modules`` are as for :class:`~itda_lens.backends.nnsight_source.NnsightSource`.
    ``retries`` and ``backoff`` are :class:`~itda_lens.backends.nnsight.RetryingBackend`'s;
    ``backend`` replaces it (for tests). After each session, ``request_bytes`` and
    ``result_bytes`` get its bytes sent (as serialised) and received (the returned
    values as ``torch.save`` writes them).
    """

    def __init__(
        self,
        model,
        modules: list[str],
        model_name: str | None = None,
        remote: bool | str = True,
        sessions: SessionSettings = DEFAULT_SESSIONS,
        *,
        retries: int = 3,
        backoff: float = 2.0,
        backend=None,
    ):
        if not isinstance(sessions, SessionSettings):
            raise TypeError(f"sessions must be a SessionSettings, got {type(sessions).__name__}.")
        self.source = NnsightSource(model, modules, model_name)  # no backend: it runs inside the session
        self.model = model
        self.hooks, self.model_name, self.d_model = self.source.hooks, self.source.model_name, self.source.d_model
        self.sessions = sessions
        self.session_batches = sessions.session_batches
        if backend is None:
            backend = RetryingBackend(model, remote, max_request_bytes=sessions.max_request_bytes, retries=retries, backoff=backoff)
        self.backend = backend
        self.request_bytes: list[int] = []
        self.result_bytes: list[int] = []

    def grow(self, builders: dict[str, DictionaryBuilder], batches: list[TokenBatch]) -> list[Outcome]:
        """Grow ``builders`` from ``batches``, in as many sessions as ``max_result_bytes``
        needs; per batch read (all, unless every builder is full first), what
        :meth:`~itda_lens.core.build.GrowingDictionary.update` returned for each hook."""
        outcomes: list[Outcome] = []
        while len(outcomes) < len(batches) and not all(builder.full for builder in builders.values()):
            done = self._session(builders, batches[len(outcomes) :])
            if not done:
                raise PayloadTooLarge(
                    f"the atoms of one batch pass max_result_bytes={self.sessions.max_result_bytes:,}: "
                    "raise the cap, or give fewer tokens per batch (batch_size, seq_len)."
                )
            outcomes += done
        return outcomes

    def _session(self, builders: dict[str, DictionaryBuilder], batches: list[TokenBatch]) -> list[Outcome]:
        source, model, cap = self.source, self.model, self.sessions.max_result_bytes
        settings = asdict(next(iter(builders.values())).settings)
        sent = {hook: (builder.atoms.cpu(), list(builder.groups)) for hook, builder in builders.items()}
        tokens = [batch.tokens for batch in batches]
        positions = [torch.nonzero(batch.mask.flatten())[:, 0] for batch in batches]
        try:
            with model.session(backend=self.backend):
                grown = grow_in_session(source, tokens, positions, sent, settings, cap)
                nnsight.save(grown)
        except PayloadTooLarge as err:
            raise PayloadTooLarge(
                f"{err} A session sends the dictionary so far ({sum(len(atoms) for atoms, _ in sent.values()):,} atoms, float32) "
                f"and the tokens of {len(batches)} batches: give fewer batches per session (session_batches) or raise max_request_bytes."
            ) from err
        self.request_bytes.append(getattr(self.backend, "request_bytes", None))
        buffer = io.BytesIO()
        torch.save(grown, buffer)
        self.result_bytes.append(buffer.tell())
        found, outcomes = grown
        for hook, builder in builders.items():
            atoms, groups = found[hook]
            builder.extend(F.normalize(atoms.float(), dim=1), groups)
        return outcomes
