"""One conversation: the session (input, turn state machine, reply player), phrase chunking, prompts,
events, stage contracts, failures and turn metrics.
"""
