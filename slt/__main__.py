import sys

from slt.cli import main

sys.exit(main())
