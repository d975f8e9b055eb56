"""Text generation, one job a module:

    sampling.py  SamplingParams, the sampling defaults of every command, `sample`
    decode.py    Sequence, DecodeBatch (prefill + cached decoding of many rows in one KV
                 cache), generate / generate_batch / stream
    beam.py      beam_search / beam_search_batch (transformers' num_beams search), BeamResult
    kernels.py   MatVecLinear, prepare_for_decoding, load_for_inference (CPU decode kernels)
    cli.py       `llmkit generate` (generate_cli) and the timing line the commands print

The names below are the Python API: `from llmkit.generate import generate, SamplingParams`.
"""

from llmkit.generate.beam import BeamResult, beam_search, beam_search_batch
from llmkit.generate.decode import (
    PREFILL_CHUNK_TOKENS,
    Completion,
    DecodeBatch,
    GenerationStream,
    Sequence,
    TokenLogprob,
    encode_prompt,
    generate,
    generate_batch,
    stream,
    with_style_stops,
)
from llmkit.generate.kernels import MATVEC_MAX_ROWS, MatVecLinear, load_for_inference, prepare_for_decoding
from llmkit.generate.sampling import (
    CHAT_MAX_NEW_TOKENS,
    COMMAND_DEFAULTS,
    OPENAI_DEFAULTS,
    SamplingParams,
    sample,
    with_defaults,
)

__all__ = [
    "CHAT_MAX_NEW_TOKENS", "COMMAND_DEFAULTS", "MATVEC_MAX_ROWS", "OPENAI_DEFAULTS", "PREFILL_CHUNK_TOKENS",
    "BeamResult", "Completion", "DecodeBatch", "GenerationStream", "MatVecLinear", "SamplingParams", "Sequence",
    "TokenLogprob", "beam_search", "beam_search_batch", "encode_prompt", "generate", "generate_batch",
    "load_for_inference", "prepare_for_decoding", "sample", "stream", "with_defaults", "with_style_stops",
]
