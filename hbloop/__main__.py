import sys

from hbloop.cli import main

sys.exit(main())
