"""Other engines run beside ours for `mistralrs bench --against` (each in its own interpreter and process).

Nothing here imports the engine, the loaders or the models: a peer is driven over a pipe, and its
worker script (`llama_cpp_worker.py`) runs by path under another interpreter with only the standard
library and the peer's own package installed.
"""
