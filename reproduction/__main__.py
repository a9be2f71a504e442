"""python -m reproduction: the papers' claims, stage by stage (reproduction/run.py; --help lists the settings)."""
import sys

from reproduction.run import main

main(sys.argv[1:])
