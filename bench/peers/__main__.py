"""`python -m bench.peers [NAME...]`: build the peers' environments ahead of a benchmark run."""

import sys

from bench.peers import PEERS, peer_python

for name in sys.argv[1:] or list(PEERS):
    print(f"{name}: {peer_python(name)}")
