"""
Moved to corpus/ (`python -m corpus`, `from corpus import prepare`). This forwarder stays only until
quickstart.py, reproduction/general.py and notebooks/teacher_head.py name corpus; then it goes.
"""
from corpus import prepare  # noqa: F401
from corpus.__main__ import main

if __name__ == "__main__":
    main()
