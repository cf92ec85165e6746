"""Synthetic face-identity data: aligned-face-like images of made-up people.

No real face data set with identity labels can be installed, so the default pipeline runs on
people drawn here, in three steps with one module each: `traits` samples what a person and
each of their images look like, `render` draws those traits as pixels, and `write` encodes the
images and writes the teacher, student and held-out image folders (in worker processes).
"""
from pipeline.data.synth.write import generate, generate_split

__all__ = ["generate", "generate_split"]
