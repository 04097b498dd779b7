"""A JAX/Flax research codebase: one training loop for every model family."""
