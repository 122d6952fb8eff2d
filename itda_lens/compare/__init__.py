"""Comparing representations across layers and models."""

from itda_lens.compare.similarity import (
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
    "MEASURES",
    "debiased_cka",
    "linear_cka",
    "mutual_knn",
    "pwcca",
    "rbf_cka",
    "relative_representation_similarity",
    "similarity_matrix",
    "svcca",
]
