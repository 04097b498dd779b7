"""Analysis of finished runs: plots now; tables and scaling-law fits come with the sweep tools."""
