"""sapphire: emulator (to be built; see the issues)."""
