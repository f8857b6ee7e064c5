"""`python -m pixelrouter.cli`."""

from pixelrouter.cli import main

main()
