"""Stage two, run once per student: backbones, losses, memory bank, samplers and the training loop
that reads the cached teacher embeddings and mined pairs (the teacher is never run again)."""
