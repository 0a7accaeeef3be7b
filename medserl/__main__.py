import sys

from medserl.cli import main

sys.exit(main())
