"""The core: the dictionary, matching pursuit, the builder, provenance, text, metrics and
storage. Plain torch; what runs inside nnsight traces imports only torch and the standard library."""
