"""`analyzer` with the test plugins `slow` and `count` registered: for tests that need a real process (signals)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import analyzer
from analyzer.cli import main

from fakes import CountingPlugin, SlowPlugin

if __name__ == "__main__":  # the metadata plugin's worker processes import this file again
    analyzer.register(SlowPlugin)
    analyzer.register(CountingPlugin)
    sys.exit(main(sys.argv[1:]))
