import sys

from medserl_cli.cli import main

sys.exit(main())
