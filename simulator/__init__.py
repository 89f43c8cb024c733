"""A deterministic data-centre site simulator: contract messages for a collector, and their ground truth."""
