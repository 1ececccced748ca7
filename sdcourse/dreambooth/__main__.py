"""python -m sdcourse.dreambooth CONFIG.yaml: train from a config file and print the run's summary as JSON."""

import json
import sys

from .config import DreamBoothConfig
from .loop import train_dreambooth

if len(sys.argv) != 2:
    sys.exit("usage: python -m sdcourse.dreambooth CONFIG.yaml")
try:
    print(json.dumps(train_dreambooth(DreamBoothConfig.from_file(sys.argv[1])).summary()))
except (ValueError, OSError) as error:  # a bad config, or an export that failed (the message says where)
    sys.exit(f"sdcourse.dreambooth: error: {error}")
