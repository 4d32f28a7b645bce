"""Turns a ModelSpec into a ready LoadedModel: sources, weights, tokenizer, chat template."""
