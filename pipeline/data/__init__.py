"""Dataset readers: every reader gives (image, identity label, stable key) per sample."""
