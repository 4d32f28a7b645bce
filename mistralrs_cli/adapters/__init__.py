"""LoRA and X-LoRA adapters: linear-layer wrappers around the one Mistral model, never a copy of it.

- `lora_files`: one PEFT adapter (adapter_config.json + adapter_model.safetensors), validated.
- `files`: where adapters and X-LoRA files sit in a folder or Hub repo (every known layout).
- `lora`: `LoraLinear`, the wrapper put in place of a targeted linear (dense or quantized).
- `xlora_config`, `classifier`, `ordering`: the X-LoRA config, scaling classifier, ordering file.
- `xlora`, `scaling_state`: `XLoraModel` (two passes per step) and its per-sequence state.
- `spec`: `LoraSpec` / `XLoraSpec`, the adapters the command line asks for.
- `load`: `prepare` (files checked before the base loads) and `apply` (wrap a loaded base).
"""
