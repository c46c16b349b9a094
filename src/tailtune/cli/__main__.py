import sys

from tailtune.cli.main import main

sys.exit(main())
