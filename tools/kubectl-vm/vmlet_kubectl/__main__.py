"""`python -m vmlet_kubectl`, the same as `kubectl vm`."""

import sys

from vmlet_kubectl.cli import main

sys.exit(main())
