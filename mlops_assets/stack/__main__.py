import sys

from mlops_assets.stack.services import main

sys.exit(main(sys.argv[1:]))
