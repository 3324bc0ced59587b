"""One trial: load, adapt, train, evaluate, save (trainer.trial), with no Ray and no results store."""

import logging

# Whatever imports bitsandbytes first (TRL, PEFT, transformers), on an AVX512-BF16 CPU it warns at import that the
# hub-only `kernels` package is missing: that kernel serves only the repacked inference path that
# trainer.fourbit.keep_training_layout turns off, so the warning says nothing about what a trial runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from trainer.moved import keep_importable

keep_importable({"trainer.pack": "trainer.lockstep"})  # renamed beside trainer.packing (which trials may share)
