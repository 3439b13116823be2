"""One-time weight surgery (KV-head grouping) and its calibration.

* :mod:`kvbench.surgery.heads` -- head layout, grouping checks, weight edits, mean-pool GQA;
* :mod:`kvbench.surgery.calibration` -- streaming KV covariances, eigenvectors, disk cache;
* :mod:`kvbench.surgery.svd_attention` -- SVD-GQA conversion and its RoPE attention module;
* :mod:`kvbench.surgery.bloom` -- BLOOM's fused attention split into a grouped one (ALiBi models).
"""
