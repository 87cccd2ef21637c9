"""bnnlab: an explorer for binarized neural networks (engine, runtime, CLI and desktop app)."""
