import sys

from trainer_ckpt.cli.commands import main

sys.exit(main())
