import sys

from hbloop.cli.main import main

sys.exit(main())
