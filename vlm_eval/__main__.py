import sys

from vlm_eval.cli import entry_point

sys.exit(entry_point())
