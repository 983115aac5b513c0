"""The DiffuPrompter engine: Stable Diffusion heatmaps and SAM instances.

Nothing in this package imports FiftyOne; ``tests/test_layers.py`` enforces
it. The FiftyOne layer (brain runs, labels, evaluation, importers) sits one
level up and builds on this package.
"""
