"""Building on the "server": ServerBuilder in nnsight sessions (``remote="local"``, and
the simulated NDIF server of test_nnsight that lacks itda-lens) gives the dictionary the
client builds from the same tokens, resumes after a failed session, and keeps to its caps."""

from __future__ import annotations

import json

import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from test_nnsight import BUILD, HOOK, FailsAfter, ServerSimulation

import itda_lens.backends.nnsight as itn
from itda_lens.backends.nnsight_build import ServerBuilder
from itda_lens.backends.nnsight_source import NnsightSource
from itda_lens.core.build import build
from itda_lens.core.config import BuildSettings, SessionSettings
from itda_lens.core.text import file_documents, select_split, token_batches
from itda_lens.tools.cli import command_parser
from itda_lens.tools.options import check_args, session_settings

MODULES = ["model.layers.3"]
NAME = "smollm2-135m-instruct"
TOKENS = 1000  # 4 batches of 4 x 64


def _batches(tokenizer, wikitext, tokens):
    return token_batches(select_split(file_documents(wikitext), "train"), tokenizer, 64, 4, tokens)


@pytest.fixture(scope="module")
def lm(nnsight_model):
    return nnsight_model


@pytest.fixture(scope="module")
def client_built(lm, tokenizer, wikitext):
    return build(NnsightSource(lm, MODULES, model_name=NAME), _batches(tokenizer, wikitext, tokens=TOKENS), **BUILD)


def _same_build(built, reference):
    assert built.tokens == reference.tokens
    a, b = built.dictionaries[HOOK], reference.dictionaries[HOOK]
    assert a.n_atoms == b.n_atoms > BUILD["settings"].k
    torch.testing.assert_close(a.atoms, b.atoms, atol=1e-5, rtol=0)
    for column in ("doc", "token_index", "char_start", "char_end", "token_id"):
        assert torch.equal(getattr(a.provenance, column), getattr(b.provenance, column)), column
    assert a.provenance.token == b.provenance.token and a.provenance.before == b.provenance.before
    assert [row[:2] for row in built.history[HOOK]] == [row[:2] for row in reference.history[HOOK]]
    torch.testing.assert_close(torch.tensor([row[2] for row in built.history[HOOK]]), torch.tensor([row[2] for row in reference.history[HOOK]]))
    assert (a.config.hook, a.config.model, a.config.k, a.config.threshold) == (b.config.hook, b.config.model, b.config.k, b.config.threshold)


@pytest.mark.parametrize("mode", ["local", "server"])
def test_server_build_equals_client_build(lm, client_built, tokenizer, wikitext, mode):
    backend = ServerSimulation(lm) if mode == "server" else None
    grower = ServerBuilder(lm, MODULES, NAME, remote="local", sessions=SessionSettings(session_batches=2), backend=backend)
    built = build(grower, _batches(tokenizer, wikitext, tokens=TOKENS), **BUILD)
    _same_build(built, client_built)
    assert len(grower.result_bytes) == 2  # 4 batches, 2 per session
    atoms_bytes = client_built.dictionaries[HOOK].n_atoms * 576 * 4
    assert sum(grower.result_bytes) < atoms_bytes + 50_000  # the atoms, not the activations of 1000 tokens
    if mode == "local":
        assert grower.request_bytes[1] > grower.request_bytes[0] + 0.5 * built.history[HOOK][1][1] * 576 * 4  # the dictionary went up


def test_interrupted_server_build_resumes_to_the_same_dictionary(lm, client_built, tokenizer, wikitext, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    broken = itn.RetryingBackend(lm, inner=FailsAfter(LocalSimulationBackend(lm), 1), retries=1, sleep=lambda s: None)
    sessions = SessionSettings(session_batches=2)
    with pytest.raises(ConnectionRefusedError):
        build(ServerBuilder(lm, MODULES, NAME, sessions=sessions, backend=broken), _batches(tokenizer, wikitext, tokens=TOKENS), checkpoint_dir=checkpoint, checkpoint_every=1, **BUILD)
    assert broken.attempts == 2  # retried once
    assert json.loads((checkpoint / "state.json").read_text())["state"]["batches"] == 2  # the first session is kept
    resumed = build(ServerBuilder(lm, MODULES, NAME, remote="local", sessions=sessions), _batches(tokenizer, wikitext, tokens=TOKENS), checkpoint_dir=checkpoint, checkpoint_every=1, **BUILD)
    _same_build(resumed, client_built)
    assert not checkpoint.exists()


def test_session_caps(lm, client_built, tokenizer, wikitext):
    with pytest.raises(itn.PayloadTooLarge, match="max_request_bytes=1,000.*fewer batches per session"):
        build(ServerBuilder(lm, MODULES, NAME, remote="local", sessions=SessionSettings(max_request_bytes=1000)), _batches(tokenizer, wikitext, tokens=TOKENS), **BUILD)
    with pytest.raises(itn.PayloadTooLarge, match="one batch pass max_result_bytes=1,000"):
        build(ServerBuilder(lm, MODULES, NAME, remote="local", sessions=SessionSettings(max_result_bytes=1000)), _batches(tokenizer, wikitext, tokens=TOKENS), **BUILD)
    first_batch = client_built.history[HOOK][0][1] * 576 * 4
    capped = ServerBuilder(lm, MODULES, NAME, remote="local", sessions=SessionSettings(session_batches=4, max_result_bytes=first_batch + 1000))
    _same_build(build(capped, _batches(tokenizer, wikitext, tokens=TOKENS), **BUILD), client_built)
    assert len(capped.result_bytes) > 1 and max(capped.result_bytes) < first_batch + 50_000  # more, smaller sessions


def test_cli_builds_on_the_server(client_built, wikitext, tmp_path):
    from itda_lens.core.itda import ITDA
    from itda_lens.tools.cli import main

    out = tmp_path / "dictionary"
    main([
        "train", "--backend", "nnsight", "--remote", "local", "--build-on", "server", "--session-batches", "3",
        "--hook", "model.layers.3", "--out", str(out), "--text-file", str(wikitext), "--max-tokens", str(TOKENS),
        "--seq-len", "64", "--batch-size", "4", "--k", "8", "--threshold", "0.2", "--no-progress",
    ])
    built, reference = ITDA.load(out), client_built.dictionaries[HOOK]
    torch.testing.assert_close(built.atoms, reference.atoms, atol=1e-5, rtol=0)
    assert torch.equal(built.provenance.token_index, reference.provenance.token_index) and built.config.hook == HOOK


def test_a_full_dictionary_stops_the_sessions_as_the_client_stops_reading(lm, tokenizer, wikitext):
    settings = BuildSettings(k=8, threshold=0.2, max_atoms=150)  # full during the second batch
    client = build(NnsightSource(lm, MODULES, model_name=NAME), _batches(tokenizer, wikitext, tokens=TOKENS), settings=settings, progress=False)
    grower = ServerBuilder(lm, MODULES, NAME, remote="local", sessions=SessionSettings(session_batches=4))
    served = build(grower, _batches(tokenizer, wikitext, tokens=TOKENS), settings=settings, progress=False)
    assert served.dictionaries[HOOK].n_atoms == 150 and served.tokens == client.tokens < TOKENS
    _same_build(served, client)


def test_session_options_reach_the_settings():
    train = ["train", "--hook", "model.layers.3", "--out", "x"]
    args = command_parser().parse_args(train)
    assert args.build_on == "client" and session_settings(args) == SessionSettings() and check_args(args) is None
    args = command_parser().parse_args([*train, "--build-on", "server", "--session-batches", "3", "--max-request-bytes", "1000", "--max-result-bytes", "2000"])
    assert session_settings(args) == SessionSettings(3, 1000, 2000)
    assert check_args(args) == "argument --build-on: server needs --backend nnsight and --remote local or ndif"
    assert check_args(command_parser().parse_args([*train, "--build-on", "server", "--backend", "nnsight", "--remote", "local"])) is None
