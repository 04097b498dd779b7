"""Training: the state pytree, pure steps, the loop and its hooks."""
