"""The command line's build, corpus and model options: their defaults are the settings'."""

from __future__ import annotations

from itda_lens.core.config import BuildSettings, CorpusSettings, ModelSettings
from itda_lens.tools.cli import command_parser
from itda_lens.tools.options import build_settings, corpus_settings, model_settings

TRAIN = ["train", "--hook", "blocks.0.hook_resid_post", "--out", "runs/x"]


def test_defaults_come_from_the_settings():
    args = command_parser().parse_args(TRAIN)
    assert build_settings(args) == BuildSettings()
    assert corpus_settings(args) == CorpusSettings()
    assert model_settings(args, args.model) == ModelSettings()


def test_no_refit_and_the_other_build_options_reach_the_settings():
    args = command_parser().parse_args([*TRAIN, "--no-refit", "--k", "8", "--threshold", "0.2", "--max-atoms", "64", "--step-tokens", "32"])
    assert build_settings(args) == BuildSettings(k=8, threshold=0.2, max_atoms=64, refit=False, step_tokens=32)
    compare = command_parser().parse_args(["compare", "--out", "x", "--no-refit"])
    assert build_settings(compare).refit is False
