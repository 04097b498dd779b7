"""The train-step benchmark: the project's step against PyTorch's and Keras's (launch/bench.py).

spec.py (what a step computes, framework-neutral), workloads.py (the rows and the project's
step), torch_steps.py / keras_steps.py (the same step in the other frameworks), options.py (the
project options they implement), timing.py (interleaved rounds), hardware.py (device name,
measured matmul peak), report.py (the table).
"""
