"""The one Mistral/Llama model implementation and its building blocks."""
