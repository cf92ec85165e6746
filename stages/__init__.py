"""Thin click commands, one per DVC stage: read a params.yaml section, call pipeline/."""
