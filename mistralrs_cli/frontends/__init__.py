"""Frontends: chat, batch and serve. They submit requests and consume streamed deltas only."""
