import sys

from collapsewatch.cli import main

sys.exit(main())
