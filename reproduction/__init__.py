"""The reproduction of the paper's tables and claims: `python -m reproduction` (run.py) runs its stages."""
