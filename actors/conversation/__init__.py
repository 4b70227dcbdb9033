"""One conversation: the session, phrase chunking, prompts, events, stage contracts, failures and turn
metrics.
"""
