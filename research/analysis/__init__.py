"""Analysis of finished runs: collecting workdirs, tables over seeds, scaling-law fits, plots."""
