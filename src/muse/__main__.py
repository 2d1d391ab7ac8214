import sys

from muse.cli import main

sys.exit(main())
