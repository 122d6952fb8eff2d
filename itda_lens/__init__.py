"""itda-lens: ITDA dictionaries (Inference-Time Decomposition of Activations) for
TransformerLens and nnsight."""

from itda_lens.build import BuildResult, DictionaryBuilder, build
from itda_lens.config import BuildSettings, CorpusSettings, ModelSettings
from itda_lens.evaluate import evaluate
from itda_lens.itda import ITDA, FormatError, ITDAConfig, SparseCodes
from itda_lens.models import DEFAULT_MODEL, load_model
from itda_lens.provenance import Provenance
from itda_lens.text import documents_from, token_batches

load = ITDA.load

__all__ = [
    "ITDA",
    "ITDAConfig",
    "SparseCodes",
    "FormatError",
    "Provenance",
    "BuildSettings",
    "CorpusSettings",
    "ModelSettings",
    "DictionaryBuilder",
    "BuildResult",
    "build",
    "evaluate",
    "load",
    "load_model",
    "DEFAULT_MODEL",
    "documents_from",
    "token_batches",
]
