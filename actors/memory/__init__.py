"""Long-term memory: the journal, the batching writer, the Letta backend, the prompt cache and the service
the memory actor runs.
"""
