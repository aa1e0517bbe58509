"""Bundled default shot(s), procedural presets and tiny fixtures; shipped as ``destruct.assets``."""
