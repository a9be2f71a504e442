"""python -m reports speed|table ...: see reports/command.py (--help lists the options)."""
from reports.command import main

main()
