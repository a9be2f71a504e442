"""The reproduction of the paper's tables and claims: reproduce.py runs it."""
