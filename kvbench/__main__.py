"""``python -m kvbench`` (and ``accelerate launch -m kvbench``): the ``kvbench`` command."""

from kvbench.cli import main

main()
