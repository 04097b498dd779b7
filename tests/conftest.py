"""Test session set-up: 8 fake CPU devices and no W&B, fixed before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["KERAS_BACKEND"] = "jax"  # the Keras porting tests build keras.applications on JAX
# Every test compiles afresh (and writes nothing to the user's cache); test_compile_cache.py
# turns the persistent cache on in its own processes.
os.environ.setdefault("RESEARCH_COMPILATION_CACHE", "off")
