"""Transfer learning below the loop: strategies as optimizer rules (`strategy`), the source
weights (`source`) and a distillation teacher (`teacher`). The Transfer and Distillation
extensions (research/train/transfer.py, distillation.py) put them into a run."""
