"""CROP subclasses of vLLM's VLM families: one file per family, shared code in `utils`."""
