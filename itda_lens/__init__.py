"""itda-lens: ITDA dictionaries (Inference-Time Decomposition of Activations) for
TransformerLens and nnsight."""

from itda_lens.backends.models import DEFAULT_MODEL, load_model
from itda_lens.core.build import BuildResult, DictionaryBuilder, build
from itda_lens.core.config import BuildSettings, CorpusSettings, ModelSettings
from itda_lens.core.itda import ITDA, FormatError, ITDAConfig, SparseCodes
from itda_lens.core.provenance import Provenance
from itda_lens.core.text import documents_from, token_batches
from itda_lens.tools.evaluate import evaluate

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
