"""The reproduction of the paper\x27s tables and claims: reproduce.py runs it."""
