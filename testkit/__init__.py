"""Infrastructure shared by the tests and the benchmarks: served apps, simulated providers, fakes, speech
and clients.
"""
