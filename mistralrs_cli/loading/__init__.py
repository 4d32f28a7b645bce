"""Turns a typed base source (loading/spec.py) into a ready LoadedModel: weights, tokenizer, chat template."""
