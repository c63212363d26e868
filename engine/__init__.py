"""The embedded JAX engine: Gemma 1/2/3 from GGUF or safetensors, served with continuous batching.

Entry points: ``engine.runtime.start_server(EngineConfig())`` -> a running ``GenerationServer``;
``engine.chat.render_gemma_chat`` for Gemma's turn format; ``engine.loading.load_tokenizer``.
This package import stays light (no JAX) so the gateway can use the chat template cheaply.
"""
