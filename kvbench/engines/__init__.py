"""Serving engines beside kvbench's own Hugging Face path (issue 29): the same workload through a real engine,
as the baseline a user would run instead of a compression method. The engine runs in its own environment
(``make engine-env``) and is driven through a subprocess, so kvbench's environment keeps its lock:
:mod:`.vllm_launcher` launches :mod:`.vllm_driver`; :mod:`.export` writes the model in a form the engine loads."""
