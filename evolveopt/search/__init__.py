"""The search over genomes (plain data and numpy; imports no torch)."""
