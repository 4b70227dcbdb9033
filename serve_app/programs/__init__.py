"""Programs that are not Serve: the CLI client, the LiveKit worker, the single-process runner and the
config checker.
"""
