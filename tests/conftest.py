import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import os

from hypothesis import Phase, settings

# bench/hw_mutations.py runs the tests with shrinking off: it wants which tests fail, fast.
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
if os.environ.get("KVMTLB_HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["KVMTLB_HYPOTHESIS_PROFILE"])
