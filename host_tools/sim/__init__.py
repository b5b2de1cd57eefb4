"""Whole-system simulations: emulated boards running the real firmware against the real broker
and settlement service (`energo sim community`)."""
