"""Speed benchmarks (`ferbench bench ...`): each prints ratios measured within one run."""
