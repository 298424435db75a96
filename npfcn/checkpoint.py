"""The checkpoint file now lives in ``npfcn.train.checkpoint``; this name stays for code
that imports it from here (its functions are the same objects)."""
from .train.checkpoint import *  # noqa: F401,F403
from .train.checkpoint import (ARCHITECTURE_KEYS, FORMAT_NAME, FORMAT_VERSION, META_KEY,  # noqa: F401
                               MODEL_PREFIX, OPTIM_PREFIX, check_npz_sizes)
