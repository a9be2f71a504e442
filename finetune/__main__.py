"""python -m finetune --task=SST-2 --data=... --model=...: see finetune/run.py (--help lists every setting)."""
from finetune.run import main

main()
