"""Audio in: PCM helpers, uploaded files, voice activity detection and endpointing."""
