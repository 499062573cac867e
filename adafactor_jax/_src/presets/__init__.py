"""Presets: each translates one library's arguments into the same building blocks."""
