import sys

from trainer_ckpt.cli import main

sys.exit(main())
