import sys

from pyro_ext.quickstart import main

sys.exit(main())
