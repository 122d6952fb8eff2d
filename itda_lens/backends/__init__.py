"""Backends: the only modules that import the libraries they adapt (TransformerLens,
nnsight, SAE Lens, transformers). Each offers the same verbs."""
