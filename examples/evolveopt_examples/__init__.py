"""User-style evolveopt tasks, installed as a package and found through its ``evolveopt.tasks`` entry points."""
