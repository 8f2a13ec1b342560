"""`analyzer` with the test plugins registered: for tests that need a real process (signals)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import analyzer
from analyzer.cli import main

from fakes import SlowPlugin

analyzer.register(SlowPlugin)
sys.exit(main(sys.argv[1:]))
