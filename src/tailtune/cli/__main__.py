import sys

from tailtune.cli.app import main

sys.exit(main())
