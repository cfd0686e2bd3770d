import sys

from crowdcount.training.cli import main

sys.exit(main())
