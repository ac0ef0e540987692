"""sapphire: forecasts (to be built; see the issues)."""
