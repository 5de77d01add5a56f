import sys

from cms_sync.cli import main

sys.exit(main())
