"""Runs several ``rlhfkit`` command lines in one ``torchrun`` launch (tests/test_distributed.py).

Starting torchrun and importing torch costs seconds per launch, so the tests join the process
group once and run each command in it: ``torchrun --nproc_per_node 2 distributed_driver.py
COMMANDS.json``, a JSON list of argument lists. Each rank writes its commands' exit codes to
``COMMANDS.json.rank<R>`` and exits with the last one's, so that torchrun stops the other ranks
when a rank's last command failed. The group's timeout is ``RLHFKIT_TEST_DIST_TIMEOUT`` seconds.
"""

import json
import os
import sys
from pathlib import Path

from rlhfkit import cli, distributed

if __name__ == "__main__":
    commands = Path(sys.argv[1])
    distributed.init(timeout_s=float(os.environ.get("RLHFKIT_TEST_DIST_TIMEOUT", "120")))
    codes = [cli.main(argv) for argv in json.loads(commands.read_text())]
    Path(f"{commands}.rank{distributed.rank()}").write_text(json.dumps(codes))
    if codes[-1] == 0:
        distributed.shutdown()
    sys.exit(codes[-1])
