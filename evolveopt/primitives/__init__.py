"""Update-rule primitives: small functions over lists of tensors with explicit state.

One family per module: ``gradient`` (clipping, signals, ALTO adaptor), ``moments`` (momentum),
``preconditioners`` (second moments, eps placement, rectification), ``layerwise`` (trust ratio,
RMS normalization, friction), ``schedules``, ``feedback`` (Eve), ``decay`` (weight decay),
``orthogonal`` (Muon's Newton–Schulz orthogonalization and shape scale).
Hyperparameters are floats or per-member tensors (see ``tensorlist``), so the same code updates
one model or a stacked population.
"""
