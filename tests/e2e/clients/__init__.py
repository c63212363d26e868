"""Clients other than the Python SDK (the OpenAI Node SDK, LangChain) against a live gateway."""
