"""Comparing representations across layers and models.

- :mod:`~itda_lens.tools.compare.jaccard`: Jaccard of two dictionaries by provenance, and its null;
- :mod:`~itda_lens.tools.compare.similarity`: baseline measures on activations (CKA, CCA, ...);
- :mod:`~itda_lens.tools.compare.layers`: layer x layer Jaccard and layer-matching accuracy;
- :mod:`~itda_lens.tools.compare.intervals`: bootstrap intervals of that accuracy;
- :mod:`~itda_lens.tools.compare.model_layers`: a model's dictionaries and activations on a corpus;
- :mod:`~itda_lens.tools.compare.comparison`: two models compared by every measure, as JSON;
- :mod:`~itda_lens.tools.compare.heatmap`: the matrices as a PNG.
"""

from itda_lens.tools.compare.comparison import (
    ALL_MEASURES,
    JACCARD,
    RARITY_JACCARD,
    WEIGHTED_JACCARD,
    compare_dictionaries,
    compare_models,
    jaccard_null_matrix,
    layer_similarities,
    model_similarities,
)
from itda_lens.tools.compare.heatmap import similarity_heatmaps
from itda_lens.tools.compare.intervals import DocumentCounts, Interval, accuracy_draws, accuracy_interval, difference_interval, document_counts
from itda_lens.tools.compare.jaccard import (
    JaccardReport,
    atom_keys,
    expected_jaccard,
    jaccard,
    jaccard_report,
    matched_pairs,
    rarity_weights,
    ruzicka,
    weighted_jaccard,
)
from itda_lens.tools.compare.layers import (
    depth_targets,
    jaccard_matrix,
    matched,
    matching_accuracy,
    rarity_jaccard_matrix,
    ruzicka_matrix,
    weighted_jaccard_matrix,
)
from itda_lens.tools.compare.model_layers import ModelLayers, model_layers
from itda_lens.tools.compare.similarity import (
    MEASURES,
    debiased_cka,
    linear_cka,
    mutual_knn,
    pwcca,
    rbf_cka,
    relative_representation_similarity,
    similarity_matrix,
    svcca,
)

__all__ = [
    "ALL_MEASURES",
    "JACCARD",
    "MEASURES",
    "RARITY_JACCARD",
    "WEIGHTED_JACCARD",
    "DocumentCounts",
    "Interval",
    "JaccardReport",
    "ModelLayers",
    "accuracy_draws",
    "accuracy_interval",
    "atom_keys",
    "compare_dictionaries",
    "compare_models",
    "debiased_cka",
    "depth_targets",
    "difference_interval",
    "document_counts",
    "expected_jaccard",
    "jaccard",
    "jaccard_matrix",
    "jaccard_null_matrix",
    "jaccard_report",
    "layer_similarities",
    "linear_cka",
    "matched",
    "matched_pairs",
    "matching_accuracy",
    "model_layers",
    "model_similarities",
    "mutual_knn",
    "pwcca",
    "rarity_jaccard_matrix",
    "rarity_weights",
    "rbf_cka",
    "relative_representation_similarity",
    "ruzicka",
    "ruzicka_matrix",
    "similarity_heatmaps",
    "similarity_matrix",
    "svcca",
    "weighted_jaccard",
    "weighted_jaccard_matrix",
]
