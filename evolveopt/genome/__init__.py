"""Genomes as plain data: schema, gene vocabulary, YAML I/O, canonical form. Imports no torch."""

from evolveopt.genome.canonical import canonical_form, genome_hash, structure_key
from evolveopt.genome.io import dump_genome, load_genome, named_genomes, parse_genome_text, read_genome_file, save_genome
from evolveopt.genome.schema import SCHEMA_VERSION, Genome, parse_genome, to_dict

__all__ = [
    "SCHEMA_VERSION", "Genome", "canonical_form", "dump_genome", "genome_hash", "load_genome",
    "named_genomes", "parse_genome", "parse_genome_text", "read_genome_file", "save_genome",
    "structure_key", "to_dict",
]
