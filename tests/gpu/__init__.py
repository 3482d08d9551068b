"""The checks of the GPU run (benchmarks/gpu_run.sh), marker cuda, each reporting its measurements:

test_out_dtype        the cuBLAS out_dtype forms of the chunked paths (mm, in-place addmm) against float64
test_paths            every path at N 4096 on the Llama-3 head against float64, NaN-poisoned allocator,
                      bitwise repeat; a misaligned ``hidden``
test_large            N * V > 2^31 on every path
test_per_token        per-token upstream gradients, 60% kept, every option on: linear_cross_entropy with
                      reduction="none", token_logprobs with entropy and lse
test_path_selection   chunk size, kernels and result unchanged under memory pressure
"""
