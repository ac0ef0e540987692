"""sapphire: training_sets (to be built; see the issues)."""
