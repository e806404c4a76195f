import sys

from numpyro_ext.quickstart import main

sys.exit(main())
